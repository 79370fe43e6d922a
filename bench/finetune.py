"""Fine-tuning throughput and peak memory: LoRA vs full fine-tuning, same model, same data, same code.

Both variants run the finetune stage's own training path (lm/supervised.py: build_model + make_trainer, the
transformers Trainer, length-grouped dynamic padding) on the same randomly initialised Llama and the same
client-length sequences, each in its own child process so that peak memory is its own (CPU: peak RSS of the
process during training, and its growth over the loaded model; CUDA: torch.cuda.max_memory_allocated).

    PYTHONPATH=source .venv/bin/python bench/finetune.py                 # CPU, 1 thread, ~8M-parameter Llama
    PYTHONPATH=source .venv/bin/python bench/finetune.py --hidden 512 --layers 8 --steps 20
    PYTHONPATH=source .venv/bin/python bench/finetune.py --model /models/Llama-3.2-1B --device cuda --precision bf16

Prints samples/s and peak memory per variant, and the ratios LoRA / full.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_model(folder: Path, hidden: int, layers: int, vocab: int, max_len: int) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(vocab - 3)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 64),
        max_position_embeddings=max_len,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    """One variant: train `args.steps` optimizer steps and print a JSON line with its figures."""
    import numpy as np
    import torch

    from llm4trx.core.config import compose
    from llm4trx.core.sections import FinetuneRunSpec
    from llm4trx.lm import classifier_trainer as trn
    from llm4trx.lm import classifiers as clf

    cfg = compose(
        [
            "finetune=default",
            "progress=false",
            f"finetune.training.max_steps={args.steps}",
            f"finetune.training.batch_size={args.batch}",
            f"finetune.training.micro_batch_size={args.batch}",
            f"finetune.training.eval_interval={args.steps + 1}",
            f"finetune.training.device={args.device}",
            f"finetune.training.precision={args.precision}",
            "finetune.training.warmup_steps=1",
            "finetune.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        ]
    )
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.max_len // 4, args.max_len, args.clients)
    sequences = [rng.integers(3, args.vocab, n).tolist() for n in lengths]
    labels = rng.integers(0, 2, args.clients)
    samples = trn.Samples(range(args.clients), sequences, labels)
    held = trn.Samples(range(8), sequences[:8], labels[:8])
    tokenizer = clf.classifier_tokenizer(Path(args.model))
    spec = FinetuneRunSpec.from_config(cfg)
    model = clf.build_model(spec, args.variant, Path(args.model), None)
    counts = clf.parameter_counts(model)
    cuda = args.device == "cuda"
    if cuda:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    with tempfile.TemporaryDirectory() as work:
        trainer = trn.make_trainer(spec, model, tokenizer, samples, held, Path(work), [], lambda p: {"auroc": 0.5})
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    peak = (
        torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    tokens = int(sum(lengths)) / args.clients * args.steps * args.batch
    print(
        json.dumps(
            {
                "variant": args.variant,
                "seconds": seconds,
                "samples_per_s": args.steps * args.batch / seconds,
                "tokens_per_s": tokens / seconds,
                "peak_mb": peak,
                "growth_mb": None if cuda else peak - before,
                "trainable": counts["trainable"],
                "total": counts["total"],
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a local HF causal LM dir (default: a random Llama written to a temp dir)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        child(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(write_model(Path(tmp) / "lm", args.hidden, args.layers, args.vocab, args.max_len))
        results = {}
        for variant in ("head_full", "head"):  # head = LoRA adapters + head; head_full = every weight
            cmd = [sys.executable, __file__, "--variant", variant, "--model", model] + [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k not in ("variant", "model") and v is not None
            ]
            out = subprocess.run(
                cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            )
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    full, lora = results["head_full"], results["head"]
    print(
        f"model: {full['total'] / 1e6:.2f}M parameters; {args.steps} steps x {args.batch} clients, lengths "
        f"{args.max_len // 4}-{args.max_len} tokens, {args.device} {args.precision}, {args.threads} thread(s)"
    )
    print(f"{'variant':<22}{'trainable':>12}{'samples/s':>11}{'tokens/s':>10}{'peak MB':>10}{'growth MB':>11}")
    for name, r in (("full fine-tuning", full), ("LoRA (r=8, all linear)", lora)):
        growth = "–" if r["growth_mb"] is None else f"{r['growth_mb']:.0f}"
        print(
            f"{name:<22}{r['trainable']:>12,}{r['samples_per_s']:>11.2f}{r['tokens_per_s']:>10.0f}"
            f"{r['peak_mb']:>10.0f}{growth:>11}"
        )
    print(
        f"LoRA / full: speed {lora['samples_per_s'] / full['samples_per_s']:.2f}x, peak memory "
        f"{lora['peak_mb'] / full['peak_mb']:.2f}x"
        + (
            ""
            if full["growth_mb"] is None
            else f", memory growth during training {lora['growth_mb'] / max(full['growth_mb'], 1e-9):.2f}x"
        )
        + f", trainable parameters {lora['trainable'] / full['trainable']:.4f}x"
    )


if __name__ == "__main__":
    main()
