"""The text stage's output contract: text/{train,val,test}.jsonl, one own text per client, and text/stats.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from llm4trx.core import registry
from llm4trx.core.errors import DataError
from llm4trx.data.splits import SPLITS


def text_path(text_dir: Path, split: str) -> Path:
    return Path(text_dir) / registry.file("text", "texts", split=split)


def write_stats(text_dir: Path, stats: dict) -> None:
    (Path(text_dir) / registry.file("text", "stats")).write_text(json.dumps(stats, indent=2) + "\n")


def read_texts(text_dir: Path) -> pd.DataFrame:
    """client_id and text of every client of train, val and test, in file order."""
    frames = []
    for split in SPLITS:
        path = text_path(text_dir, split)
        if not path.is_file():
            raise DataError(path, "missing (the text stage writes train, val and test)")
        frame = pd.read_json(path, lines=True, dtype={"client_id": str})
        for column in ("client_id", "text"):
            if column not in frame.columns:
                raise DataError(path, "column missing", column=column)
        bad = frame["text"].map(lambda t: not isinstance(t, str))
        if bad.any():
            raise DataError(path, "text is not a string", column="text", row=int(np.argmax(bad.to_numpy())) + 1)
        frame["client_id"] = frame["client_id"].astype(str)
        if "source" in frame.columns:  # train.jsonl mixed with augmented texts (augment.mix): the client's own only
            frame = frame[frame["source"].fillna("base") == "base"]
        frames.append(frame[["client_id", "text"]].assign(split=split))
    texts = pd.concat(frames, ignore_index=True)
    dup = texts["client_id"].duplicated(keep=False)
    if dup.any():
        first = texts[dup].iloc[0]
        raise DataError(
            text_dir,
            f"client {first.client_id!r} appears more than once across {sorted(set(texts[dup].split))}.jsonl",
            column="client_id",
        )
    return texts
