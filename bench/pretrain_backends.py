"""Training throughput of the two pretraining backends on the same tiny model, data and CPU, in one run.

    PYTHONPATH=source .venv/bin/python bench/pretrain_backends.py [hydra overrides...]

Both backends train `--steps` optimizer steps of the composed config's model (default experiment=smoke:
the tiny Llama) on the same MDS shards, with the same torch thread count, batch size and collator. Throughput
is real (non-padding) tokens per second between the end of step `--warmup` and the end of the last step,
measured at step ends by a callback in each backend, so start-up, evaluation and checkpointing are excluded.
Prints both figures and the ratio llm-foundry / transformers Trainer (goal >= 1.0).
If the config's tokenizer/ and mds/ stages are not built, the synthetic LM inputs of the tests are written
to a temporary directory first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "source"))
sys.path.insert(0, str(REPO / "tests"))

IGNORE_INDEX = -100


class StepClock:
    """(wall time, cumulative real tokens) at the end of every optimizer step."""

    def __init__(self):
        self.tokens = 0
        self.marks: list[tuple[float, int]] = []

    def step_end(self):
        self.marks.append((time.perf_counter(), self.tokens))

    def rate(self, warmup: int) -> tuple[float, int, float]:
        (t0, n0), (t1, n1) = self.marks[warmup - 1], self.marks[-1]
        return (n1 - n0) / (t1 - t0), n1 - n0, t1 - t0


def real_tokens(batch) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


def bench_foundry(cfg, inputs, folder: Path, clock: StepClock) -> None:
    from composer.core import Callback
    from llmfoundry import registry
    from llmfoundry.command_utils import train
    from omegaconf import OmegaConf

    from llm4trx.lm import foundry_config, foundry_plugins

    class FoundryClock(Callback):
        def batch_end(self, state, logger):
            clock.tokens += real_tokens(state.batch)
            clock.step_end()

    foundry_plugins.register()
    registry.callbacks.register("llm4trx_bench_clock", func=FoundryClock)
    foundry_config.write_init_config(cfg, inputs["tok"], folder / foundry_config.INIT_CONFIG_DIR)
    train_cfg = foundry_config.train_config(cfg, inputs["tok"], inputs["tokenizer_dir"], inputs["mds_dir"], folder)
    train_cfg["callbacks"]["llm4trx_bench_clock"] = {}
    train(OmegaConf.create(train_cfg)).close()


def bench_hf(cfg, inputs, folder: Path, clock: StepClock) -> None:
    from transformers import TrainerCallback

    from llm4trx.lm.hf_backend import build_trainer

    class HFClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.step_end()

    trainer = build_trainer(cfg, inputs, folder, callbacks=[HFClock()])
    collate = trainer.data_collator

    def counting_collator(examples):  # num_workers=0: called right before the step that uses the batch
        batch = collate(examples)
        clock.tokens += real_tokens(batch)
        return batch

    trainer.data_collator = counting_collator
    trainer.train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: trainer.cpu_threads)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch

    from llm4trx.core.config import compose
    from llm4trx.pretrain import check_inputs
    from llm4trx.core.stage import read_success, stage_dir

    tmp = Path(tempfile.mkdtemp(prefix="bench_pretrain_"))
    overrides = ["experiment=smoke", "progress=false", *args.overrides]
    cfg = compose(overrides)
    if read_success(stage_dir(cfg, "shards")) is None or read_success(stage_dir(cfg, "tokenizer")) is None:
        from fixtures_lm import build_lm_inputs

        cfg = compose([*overrides, f"paths.output_root={tmp / 'outputs'}"])
        build_lm_inputs(cfg, n_train=320, n_val=16)
    never = f"{10 * args.steps}ba"
    cfg = compose(
        [
            *overrides,
            f"paths.output_root={cfg.paths.output_root}",
            f"trainer.max_duration={args.steps}ba",
            f"trainer.eval_interval={never}",
            f"trainer.save_interval={never}",
            "trainer.eval_first=false",
        ]
    )
    threads = args.threads or cfg.trainer.get("cpu_threads")
    if threads:
        torch.set_num_threads(int(threads))
        os.environ["OMP_NUM_THREADS"] = str(threads)  # accelerate (HF Trainer) would reset the thread count
    inputs = check_inputs(cfg)

    clocks = {"foundry": StepClock(), "hf": StepClock()}
    bench_foundry(cfg, inputs, tmp / "foundry", clocks["foundry"])
    bench_hf(cfg, inputs, tmp / "hf", clocks["hf"])

    rates = {}
    for name, label in (("foundry", "llm-foundry + Composer"), ("hf", "transformers Trainer")):
        rate, tokens, seconds = clocks[name].rate(args.warmup)
        rates[name] = rate
        print(
            f"{label:24s}: {rate:9.0f} tokens/s  ({tokens} real tokens in steps {args.warmup + 1}..{args.steps}, "
            f"{seconds:.2f} s)"
        )
    print(
        f"model={cfg.model.name} batch={cfg.trainer.global_train_batch_size} max_seq_len={cfg.max_seq_len} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"ratio llm-foundry / HF Trainer: {rates['foundry'] / rates['hf']:.2f} (goal >= 1.0)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
