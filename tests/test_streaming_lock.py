"""Pretraining's dataloader (`llm4trx_text`) builds its streaming datasets under a machine-wide file lock, so
seeds run side by side (run_multi_seed.sh parallel_seeds) cannot race in streaming's shared-memory
registration."""

from __future__ import annotations

import threading

import numpy as np
from filelock import FileLock
from llmfoundry.data import text_data  # noqa: F401  imported here, so that building the loader takes a moment only

from fixtures_lm import build_lm_inputs
from llm4trx.core.config import compose
from llm4trx.lm import foundry_config, foundry_plugins
from llm4trx.lm.tokenizers import load_tokenizer


def loader_kwargs(folders):
    cfg = compose([f"paths.output_root={folders['root']}", "max_seq_len=64"])
    section = foundry_config.loader_section(cfg, folders["shards"] / "train", train=False)
    assert section.pop("name") == "llm4trx_text"  # what pretraining asks llm-foundry for
    return {**section, "tokenizer": load_tokenizer(folders["tokenizer"]), "device_batch_size": 4}


def test_the_dataloader_waits_for_the_machine_wide_lock_then_reads_the_shards(tmp_path):
    root = tmp_path / "outputs"
    folders = build_lm_inputs(compose([f"paths.output_root={root}", "max_seq_len=64"]), n_train=8, n_val=2)
    kwargs = loader_kwargs({**folders, "root": root})
    built = {}

    def build():
        built["spec"] = foundry_plugins.build_text_dataloader_locked(**kwargs)

    lock = FileLock(str(foundry_plugins.STREAMING_SHM_LOCK))
    with lock:  # another job registering its datasets
        worker = threading.Thread(target=build)
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive() and "spec" not in built  # waiting for the lock, nothing registered yet
    worker.join(timeout=120)
    assert not worker.is_alive()

    batch = next(iter(built["spec"].dataloader))
    from streaming import StreamingDataset

    first = StreamingDataset(local=str(folders["shards"] / "train"), shuffle=False)[0]["tokens"]
    row = batch["input_ids"][0].numpy()
    assert np.array_equal(row[: len(first)], first[:64])
