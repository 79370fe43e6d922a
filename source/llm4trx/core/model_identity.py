"""The identity of a model directory, part of the hash of a stage that applies it (embed.model): its export's
config hash where a stage of ours wrote it, else its files' names, sizes and times."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llm4trx.core.registry import SUCCESS


# The record export writes beside an HF model: what it was trained on (read and written by data/model_record.py).
MODEL_RECORD = "llm4trx.json"
# Files whose sizes and times identify a model directory that no stage of ours wrote.
MODEL_FILES = (
    "config.json",
    "*.safetensors",
    "pytorch_model*.bin",
    "*.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    MODEL_RECORD,
)


def model_fingerprint(model_dir: Path) -> str:
    """Identity of a model directory (in the hash of a stage that applies it): its export's config hash where a
    stage of ours wrote it, else a digest of the names, sizes and modification times of its model and tokenizer
    files (never their bytes: a 1B model's weights would take seconds to hash on every config check)."""
    model_dir = Path(model_dir)
    success = model_dir / SUCCESS.path
    if success.is_file():
        try:
            return "export:" + str(json.loads(success.read_text())["config_hash"])
        except (json.JSONDecodeError, KeyError):
            pass
    entries = []
    for pattern in MODEL_FILES:
        for path in sorted(model_dir.glob(pattern)):
            stat = path.stat()
            entries.append([path.name, stat.st_size, stat.st_mtime_ns])
    return "files:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
