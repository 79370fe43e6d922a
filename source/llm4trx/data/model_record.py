"""hf/llm4trx.json: what a model was trained on, so that it can be applied to other data (`embed.model=DIR`).

The export stage writes it beside the HF files: the text config the model's texts were rendered with (format and
its keys), the tokenizer (its config and a digest of tokenizer.json), the dataset's schema and the run
(experiment, dataset, seed). The embed stage reads it when `embed.model` points at a model dir and compares it
with this run's config: texts rendered another way, or by another schema, than the model learned are one
line naming both. A plain HF checkpoint (a local Llama/Qwen dir) has no such file: it is applied with a warning
that the formats cannot be checked.

Also here: the model's identity for hashes and for the reuse of embeddings (`fingerprint`), and the name of
its row in validation and the report (`row_name`). Nothing here imports torch or transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from llm4trx.core.errors import ConfigError, DataError, load_json
from llm4trx.core.sections import DatasetSpec, RunSpec
from llm4trx.core.model_identity import MODEL_FILES, MODEL_RECORD as RECORD, model_fingerprint as fingerprint  # noqa: F401

log = logging.getLogger(__name__)

VERSION = 1
# Text keys that do not change how one transaction is rendered: memory (chunk_events) and the budget
# (max_tokens, count_tokenizer only truncate older transactions; embed truncates to the model's length anyway).
TEXT_KEYS_NOT_COMPARED = ("chunk_events", "max_tokens", "count_tokenizer")
SCHEMA_KEYS = ("loader", "id_column", "categorical", "mcc_names")


def _file_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


def schema_of(ds: DatasetSpec) -> dict[str, Any]:
    return {key: getattr(ds, key) for key in SCHEMA_KEYS}


def text_format_of(text: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in text.items() if k not in TEXT_KEYS_NOT_COMPARED}


def make_record(run: RunSpec, tokenizer_dir: Path) -> dict[str, Any]:
    """The record of the model this run exports (written by the export stage)."""
    return {
        "llm4trx_record": VERSION,
        "run": {"experiment": str(run.experiment_name), "dataset": str(run.dataset.name), "seed": int(run.seed)},
        "text": run.text,
        "schema": schema_of(run.dataset),
        "tokenizer": {
            "config": run.tokenizer,
            "tokenizer_json": _file_digest(Path(tokenizer_dir) / "tokenizer.json"),
        },
        "max_seq_len": int(run.max_seq_len),
    }


def write_record(folder: Path, record: dict[str, Any]) -> None:
    (Path(folder) / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_record(model_dir: Path) -> dict[str, Any] | None:
    """The model's record, or None for a plain HF checkpoint without one."""
    path = Path(model_dir) / RECORD
    if not path.is_file():
        return None
    record = load_json(path)
    for key in ("run", "text", "schema", "tokenizer"):
        if key not in record:
            raise DataError(path, f"missing key {key!r} (written by python -m llm4trx.export)")
    return record


def _differences(want: dict, have: dict, prefix: str) -> list[str]:
    keys = sorted(set(want) | set(have))
    return [f"{prefix}.{k}={have.get(k)!r} (model: {want.get(k)!r})" for k in keys if want.get(k) != have.get(k)]


def check_applicable(this_run: RunSpec, model_dir: Path) -> dict[str, Any] | None:
    """Raise ConfigError when this run's texts are not what the model in `model_dir` was trained on; warn when
    the model has no record (a plain HF checkpoint). Returns the record."""
    record = read_record(model_dir)
    if record is None:
        log.warning(
            "embed.model=%s has no %s (not exported by llm4trx): the text format and tokenizer it was "
            "trained with cannot be checked against this run's (text.format=%s)",
            model_dir,
            RECORD,
            this_run.text["format"],
        )
        return None
    model_text = {k: v for k, v in record["text"].items() if k not in TEXT_KEYS_NOT_COMPARED}
    diffs = _differences(model_text, text_format_of(this_run.text), "text") + _differences(
        record["schema"], schema_of(this_run.dataset), "dataset"
    )
    model_tok = record["tokenizer"]["config"]
    if model_tok.get("kind") != this_run.tokenizer.get("kind"):
        diffs.append(f"tokenizer.kind={this_run.tokenizer.get('kind')!r} (model: {model_tok.get('kind')!r})")
    if diffs:
        run = record["run"]
        raise ConfigError(
            f"embed.model={model_dir} was trained on texts of experiment {run['experiment']!r} (dataset "
            f"{run['dataset']!r}) rendered otherwise than this run's: {'; '.join(diffs)}; use the model's "
            f"settings (e.g. the same experiment= preset) or a model trained on this format"
        )
    return record


def applied_model(model: str | None) -> Path | None:
    """`embed.model` as a path, or None when embed uses this run's own export."""
    return Path(str(model)) if model else None


def row_name(model: Path | None, name: str | None, record: dict[str, Any] | None) -> str:
    """`llm` for this run's own model (`model` None); `llm:<name>` for an applied one: `name` (embed.name), else
    the model's run (<experiment>-<dataset>-seed_<seed>) from its record, else the directory's name."""
    if model is None:
        return "llm"
    if name:
        return f"llm:{name}"
    if record is not None:
        run = record["run"]
        return f"llm:{run['experiment']}-{run['dataset']}-seed_{run['seed']}"
    return f"llm:{model.resolve().name}"
