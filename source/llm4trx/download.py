"""Stage `download`: the public files of a real dataset → `dataset.raw_dir`, verified and decompressed.

    python -m llm4trx.download dataset=rosbank                     # into ${LLM4TRX_DATA_DIR:-data}/rosbank
    python -m llm4trx.download dataset=age_pred dataset.raw_dir=/data/age_pred
    HF_ENDPOINT=http://mirror.local python -m llm4trx.download dataset=gender   # a hub mirror

Where the files come from (a Hugging Face dataset repo and revision) and what they must be (size, sha256) is
`dataset.download` in conf/dataset/<name>.yaml; how they are fetched (huggingface_hub: resumable, atomic;
verified and unpacked by us) is llm4trx.data.fetch.
Files already in raw_dir are skipped. Unlike the other stages this one writes no stage folder of the run
directory: its output is raw_dir itself, shared by every experiment, with `_DOWNLOAD.json` (what was fetched,
sizes and checksums) in place of `_SUCCESS.json`; it counts as done when every expected file is there.
`scripts/run.sh` runs it first when the dataset has a `download` section and a file is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from llm4trx.core.cli import stage_main
from llm4trx.core.sections import DatasetSpec
from llm4trx.data import fetch

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    counts = fetch.ensure(DatasetSpec.from_config(cfg.dataset))
    raw = Path(cfg.dataset.raw_dir)
    log.info(
        "download %s: %d downloaded (%s), %d already present, in %s",
        cfg.dataset.name,
        counts["downloaded"],
        fetch.human(counts["bytes"]),
        counts["present"],
        raw,
    )
    return raw


main = stage_main(run)

if __name__ == "__main__":
    main()
