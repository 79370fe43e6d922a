"""Every shipped preset of conf/experiment/ runs: the CPU ones end to end through scripts/run.sh at a tiny size,
the GPU ones composed and checked by llm4trx.core.check (as run.sh does before anything runs); and the documented
flow of applying a trained model to new data (embed.model=<another run's hf/>).

smoke runs on the session's shared output root (tests/test_pipeline.py runs the same command: whichever comes
second skips every stage), and smoke_augment reads smoke's exported model from there, as the preset says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fixtures_lm import PUBLISHED_CONFIGS, write_model_config
from llm4trx.core import check
from llm4trx.core.config import CONF_DIR, compose
from llm4trx.core.registry import pipeline
from pipeline_helpers import TINY, run_script

pytestmark = pytest.mark.slow

PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
CPU_PRESETS = ["quality_cpu", "smoke", "smoke_augment", "smoke_finetune"]
GPU_PRESETS = [p for p in PRESETS if p not in CPU_PRESETS]
SIZE = TINY[1:]  # the tiny sizes of tests/pipeline_helpers.py without its experiment=smoke
# Every run x fold is a training of its own: 2 folds (not 5) and 128-token clients keep the 3 runs x 2 folds
# in seconds; the folds' logic is tested in tests/test_finetune.py.
FINETUNE_SIZE = [
    "splits.n_folds=2",
    "max_seq_len=128",
    "finetune.training.max_steps=2",
    "finetune.training.eval_interval=2",
    "finetune.training.warmup_steps=1",
    "finetune.training.eval_batch_size=64",
]

# The quality preset's 4-layer, 128-wide model on 512-token clients in batches of 16: 4 batches of 4 at this
# size (the test alone: 52 s -> 32 s); its architecture, text and learning rate stay the preset's.
# The LM-side presets (finetune) and the applied model change nothing on the baselines' side, which smoke and
# quality_cpu run in full: their tests validate the llm row (and finetune's) alone, so neither coles nor
# baselines is in their pipeline.
LLM_ROWS = ["validate.feature_sets=[llm]", "validate.concatenations=[]"]

QUALITY_SIZE = [
    "trainer.max_duration=4ba",
    "trainer.eval_interval=4ba",
    "trainer.save_interval=4ba",
    "trainer.global_train_batch_size=4",
    "trainer.device_train_microbatch_size=4",
]


def ran(output: str) -> list[str]:
    return re.findall(r"run\.sh \[seed \d+\] \d+/\d+ (\w+): started", output)


def results(root: Path, experiment: str) -> dict:
    return json.loads((root / experiment / "synthetic" / "seed_1" / "validation" / "results.json").read_text())


@pytest.fixture(scope="module")
def root(smoke_run) -> Path:
    return smoke_run.root


@pytest.fixture(scope="module")
def smoke(smoke_run):
    """The smoke preset at the tiny size: the suite's one shared smoke run (seeds 1 and 2, tests/conftest.py)."""
    return smoke_run


def test_the_cpu_presets_are_those_on_the_cpu_trainer():
    on_cpu = [p for p in PRESETS if compose([f"experiment={p}"]).trainer.get("device") == "cpu"]
    assert on_cpu == CPU_PRESETS  # a new CPU preset must be run below


def test_smoke(root, smoke):
    assert {"llm", "aggregates", "coles", "random", "oracle"} <= set(results(root, "smoke")["feature_sets"])


def train_samples(output: str) -> int:
    return int(re.search(r"shards: done in [\d.]+ s: train ([\d,]+) samples", output).group(1).replace(",", ""))


def test_smoke_augment(root, smoke):
    """The preset's own part, to the shards that pretraining reads: smoke's exported model rewrites clients and
    the text stage mixes them into the train split. Pretraining on a mixed corpus and what follows is smoke's
    code (tests/test_augment_e2e.py pretrains on one)."""
    proc = run_script(
        "scripts/run.sh",
        "experiment=smoke_augment",
        *SIZE,
        f"paths.output_root={root}",
        "seed=1",
        env={"STAGES": "..shards"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == ["prepare", "augment", "text", "tokenizer", "shards"]
    written = int(re.search(r"augment: done in [\d.]+ s: requests \d+, samples (\d+)", proc.stdout).group(1))
    added = train_samples(proc.stdout) - train_samples(smoke.stdout)
    assert 0 < added <= written  # mix.fraction of the augmented clients' texts joined smoke's train split


def test_smoke_finetune(tmp_path):
    """The preset's field tokenizer knows no "no"/"yes": the verbalizer scores spare vocabulary tokens."""
    proc = run_script(
        "scripts/run.sh",
        "experiment=smoke_finetune",
        *SIZE,
        *FINETUNE_SIZE,
        *LLM_ROWS,
        f"paths.output_root={tmp_path}",
        "seed=1",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "finetune" in ran(proc.stdout)
    found = results(tmp_path, "smoke_finetune")["feature_sets"]
    assert {"finetune:head", "finetune:head_full", "finetune:verbalizer"} <= set(found)
    curves = json.loads((tmp_path / "smoke_finetune" / "synthetic" / "seed_1" / "finetune" / "curves.json").read_text())
    assert len(set(curves["label_token_ids"])) == 2 and "<|unk|>" not in curves["label_tokens"]


def test_quality_cpu(tmp_path):
    proc = run_script(
        "scripts/run.sh", "experiment=quality_cpu", *SIZE, *QUALITY_SIZE, f"paths.output_root={tmp_path}", "seed=1"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == pipeline(compose(["experiment=quality_cpu"]))
    assert {"llm", "aggregates", "coles", "random"} <= set(results(tmp_path, "quality_cpu")["feature_sets"])


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_preset_is_composed_and_checked(tmp_path, capsys, preset):
    model = write_model_config(tmp_path / "model", PUBLISHED_CONFIGS["llama_3_2_1b"])
    rc = check.main(
        [
            "--shell",
            f"experiment={preset}",
            f"model.pretrained_model_name_or_path={model}",
            f"paths.output_root={tmp_path / 'outputs'}",
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    stages = re.search(r"^STAGES='?([^'\n]*)'?$", out.out, re.M).group(1).split()
    assert stages[-6:] == ["pretrain", "export", "embed", "coles", "baselines", "validate"]
    assert f"/{compose([f'experiment={preset}']).experiment_name}/" in out.out


def test_a_model_trained_in_one_run_embeds_new_data_in_another(root, smoke):
    """The documented flow: pretrain on dataset X (smoke), then embed new raw files of the same schema (another
    generator seed) with that model, in a run of its own that trains no LM."""
    hf = root / "smoke" / "synthetic" / "seed_1" / "hf"
    assert (hf / "llm4trx.json").is_file()
    proc = run_script(
        "scripts/run.sh",
        *TINY,
        *LLM_ROWS,
        f"paths.output_root={root}",
        "seed=1",
        "experiment_name=smoke_next",
        "dataset.seed=1",
        f"embed.model={hf}",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert ran(proc.stdout) == ["prepare", "text", "embed", "validate"]  # no tokenizer, shards nor pretraining
    assert "llm:smoke-synthetic-seed_1" in results(root, "smoke_next")["feature_sets"]
