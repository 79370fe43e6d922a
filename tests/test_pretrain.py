"""Stage `pretrain`: llm-foundry training in-process, metrics.jsonl, skip/resume, the HF backend, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_lm import BUCKETED, PUBLISHED_CONFIGS, SMOKE_TEST_SCHEDULE, build_lm_inputs, smoke_cfg, write_model_config

from llm4trx.core.errors import ConfigError, DataError, StageInputMissing
from llm4trx.pretrain import run
from llm4trx.core.stage import read_success, stage_dir

REPO = Path(__file__).resolve().parents[1]


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def losses(rows: list[dict], split: str) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in rows if row["split"] == split}


@pytest.mark.slow
def test_smoke_trains_tiny_model_and_eval_loss_falls(smoke_pretrained):
    cfg, folder = smoke_pretrained
    done = read_success(folder)
    assert done["counts"]["backend"] == "foundry"
    assert done["counts"]["steps"] == 60 and done["counts"]["resumed_from_step"] == 0
    # Length-bucketed batches (opted into by the fixture): little padding; token counts are real tokens.
    counts = done["counts"]
    assert counts["length_bucketing"] is True and 0 <= counts["padded_share"] < 0.15
    assert 0 < counts["tokens_seen"] <= counts["samples_seen"] * cfg.max_seq_len
    assert counts["real_tokens_per_s"] == pytest.approx(counts["tokens_seen"] / counts["train_seconds"], rel=0.01)
    assert sorted(p.name for p in folder.glob("ep*-ba*-rank0.pt"))  # Composer checkpoints
    assert (folder / "latest-rank0.pt").exists()
    rows = read_metrics(folder)
    assert set(rows[0]) == {"step", "split", "loss"}
    train = losses(rows, "train")
    assert sorted(train) == list(range(1, 61))
    evals = losses(rows, "eval")
    assert sorted(evals) == [0, 20, 40, 60]
    # From ~ln(vocab) at step 0 to well below it: the texts are learnable.
    assert evals[60] < 0.6 * evals[0]
    assert evals[60] < evals[20]


@pytest.mark.slow
def test_rerun_of_a_finished_run_is_skipped(smoke_pretrained):
    cfg, folder = smoke_pretrained
    before = (folder / "_SUCCESS.json").read_text()
    started = time.time()
    assert run(cfg) == folder
    assert time.time() - started < 5
    assert (folder / "_SUCCESS.json").read_text() == before
    # Operational settings (threads, trackers, intervals of console output) are not part of the run's identity.
    relaunched = smoke_cfg(
        Path(cfg.paths.output_root),
        *SMOKE_TEST_SCHEDULE,
        *BUCKETED,  # as the fixture trained it
        "trainer.cpu_threads=2",
        "trainer.console_log_interval=1ba",
    )
    assert run(relaunched) == folder
    assert (folder / "_SUCCESS.json").read_text() == before


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    out_root = tmp_path / "outputs"
    overrides = [*SMOKE_TEST_SCHEDULE, "trainer.save_interval=10ba", "trainer.eval_first=false"]
    cfg = smoke_cfg(out_root, *overrides)
    build_lm_inputs(cfg)
    folder = stage_dir(cfg, "pretrain")
    command = [
        sys.executable,
        "-m",
        "llm4trx.pretrain",
        "experiment=smoke",
        f"paths.output_root={out_root}",
        "progress=false",
        "trainer.cpu_threads=1",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "source")}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 200
        while not (folder / "latest-rank0.pt").exists():
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.time() < deadline, "no checkpoint within 200 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert read_success(folder) is None  # killed mid-way: unfinished
    killed_at = int(os.readlink(folder / "latest-rank0.pt").split("-ba")[1].split("-")[0])
    assert 10 <= killed_at < 60
    before = losses(read_metrics(folder), "train")
    # A later checkpoint written but never linked as latest, as a kill between Composer's save and its link
    # leaves (seen when a killed launcher's ranks stop mid-save): Composer alone refuses to start beside it.
    orphan = folder / os.readlink(folder / "latest-rank0.pt").replace(f"-ba{killed_at}-", f"-ba{killed_at + 10}-")
    shutil.copyfile(folder / "latest-rank0.pt", orphan)

    # Rerun the same command (in-process) and count the optimizer steps it actually trains.
    from llm4trx.lm import foundry_plugins

    appended = []
    original = foundry_plugins.append_loss
    monkeypatch.setattr(
        foundry_plugins,
        "append_loss",
        lambda path, step, split, loss: (appended.append((step, split)), original(path, step, split, loss)),
    )
    run(cfg)
    done = read_success(folder)["counts"]
    assert done["steps"] == 60
    assert done["resumed_from_step"] == killed_at
    assert os.readlink(folder / "latest-rank0.pt").endswith("-ba60-rank0.pt")
    trained = [step for step, split in appended if split == "train"]
    assert trained == list(range(killed_at + 1, 61))  # continued, not restarted from step 0
    after = losses(read_metrics(folder), "train")
    assert sorted(after) == list(range(1, 61))  # steps the killed run logged past its checkpoint were replaced
    assert all(after[s] == before[s] for s in range(1, killed_at + 1))
    # The loss continues where the checkpoint left it (a fresh model would start near ln(vocab) ~ 6).
    assert after[killed_at + 1] < after[1] - 1.0


@pytest.mark.slow
def test_hf_backend_trains_on_the_same_data_and_writes_the_same_metrics(tmp_path):
    cfg = smoke_cfg(
        tmp_path / "outputs",
        "trainer.backend=hf",
        "trainer.packing=false",  # the hf backend does not pack (the smoke preset does)
        "trainer.max_duration=30ba",
        "trainer.eval_interval=15ba",
        "trainer.eval_first=true",
        "trainer.save_interval=15ba",
    )
    build_lm_inputs(cfg)
    folder = run(cfg)
    done = read_success(folder)["counts"]
    assert done["backend"] == "hf" and done["steps"] == 30
    assert (folder / "final" / "model.safetensors").is_file()
    rows = read_metrics(folder)
    assert sorted(losses(rows, "train")) == list(range(1, 31))
    evals = losses(rows, "eval")
    assert sorted(evals) == [0, 15, 30] and evals[30] < 0.7 * evals[0]

    from llm4trx.export import run as export

    hf_dir = export(cfg)
    counts = read_success(hf_dir)["counts"]
    assert counts["backend"] == "hf" and counts["max_abs_logit_diff"] <= 1e-4
    assert (hf_dir / "model.safetensors").is_file() and (hf_dir / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------ bad input


def assert_nothing_written(cfg):
    assert not stage_dir(cfg, "pretrain").exists()


def test_composer_records_the_cpu_name_without_starting_py_cpuinfo(monkeypatch):
    """Every Trainer asks Composer for the host CPU's name; after register() it is read from /proc/cpuinfo, not
    probed by py-cpuinfo (a Python interpreter, lscpu and dmesg: ~1.2 CPU-s per Trainer)."""
    import cpuinfo
    from composer.utils import get_composer_env_dict

    from llm4trx.lm import foundry_plugins

    foundry_plugins.register()
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: pytest.fail("py-cpuinfo probed the CPU"))
    name = get_composer_env_dict()["cpu_model"]
    assert name and name == foundry_plugins.host_cpu_model()
    if Path("/proc/cpuinfo").is_file():
        assert f": {name}\n" in Path("/proc/cpuinfo").read_text()


def test_missing_shards_name_the_stage_to_run(tmp_path):
    cfg = smoke_cfg(tmp_path)
    with pytest.raises(StageInputMissing, match="shards|tokenizer"):
        run(cfg)
    assert_nothing_written(cfg)


def test_empty_shards_are_an_error_naming_the_index(tmp_path):
    cfg = smoke_cfg(tmp_path)
    build_lm_inputs(cfg, empty_val=True)
    with pytest.raises(DataError, match=r"val/index.json: the MDS split is empty"):
        run(cfg)
    assert_nothing_written(cfg)


@pytest.mark.parametrize("missing", ["pad", "eos"])
def test_tokenizer_without_pad_or_eos_is_rejected(tmp_path, missing):
    cfg = smoke_cfg(tmp_path)
    build_lm_inputs(cfg, **{missing: False})
    with pytest.raises(DataError, match=f"tokenizer_config.json, column '{missing}_token': the tokenizer has no"):
        run(cfg)
    assert_nothing_written(cfg)


def test_max_seq_len_beyond_the_model_is_rejected(tmp_path):
    local = write_model_config(
        tmp_path / "llama", {**PUBLISHED_CONFIGS["llama_3_2_1b"], "max_position_embeddings": 128}
    )
    cfg = smoke_cfg(tmp_path, "model=llama_3_2_1b", f"model.pretrained_model_name_or_path={local}", "max_seq_len=256")
    build_lm_inputs(cfg)
    with pytest.raises(ConfigError, match=r"max_seq_len=256 is larger than model llama_3_2_1b supports \(128"):
        run(cfg)
    assert_nothing_written(cfg)


def test_pretrained_model_needs_a_local_checkpoint(tmp_path):
    cfg = smoke_cfg(tmp_path, "model=qwen2_5_1_5b")
    build_lm_inputs(cfg)
    with pytest.raises(ConfigError, match="set model.pretrained_model_name_or_path"):
        run(cfg)
    cfg = smoke_cfg(tmp_path, "model=qwen2_5_1_5b", f"model.pretrained_model_name_or_path={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="no config.json there"):
        run(cfg)
    assert_nothing_written(cfg)


def test_fsdp_on_cpu_is_rejected(tmp_path):
    cfg = smoke_cfg(tmp_path, "trainer.fsdp={sharding_strategy:FULL_SHARD}")
    build_lm_inputs(cfg)
    with pytest.raises(ConfigError, match="FSDP runs on GPUs only"):
        run(cfg)
    assert_nothing_written(cfg)
