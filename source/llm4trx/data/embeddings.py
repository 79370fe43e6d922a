"""The embeddings file contract shared by every producer (embed, coles; baselines for its feature sets) and
reader (validate): <dataset.id_column> as strings, sorted, then emb_0000.. float columns, one row per client."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from llm4trx.core import registry
from llm4trx.core.errors import DataError


def embeddings_path(folder: Path, stage: str = "embed") -> Path:
    """The embeddings file of the embed or the coles stage's `folder`."""
    return Path(folder) / registry.file(stage, "embeddings")


def features_path(folder: Path, name: str) -> Path:
    """The features of a seed-independent set (aggregates, oracle) in the baselines stage's folder."""
    return Path(folder) / registry.file("baselines", "features", name=name)


def write_embeddings(path: Path, frame: pd.DataFrame) -> None:
    """`frame` from `embeddings_frame`."""
    frame.to_parquet(path, index=False)


def embeddings_frame(id_column: str, client_ids, matrix: np.ndarray) -> pd.DataFrame:
    columns = {id_column: pd.array(client_ids, dtype="string")}
    columns.update({f"emb_{j:04d}": matrix[:, j] for j in range(matrix.shape[1])})
    return pd.DataFrame(columns).sort_values(id_column, kind="stable").reset_index(drop=True)


def read_embeddings(path: Path, id_column: str, prefix: str) -> pd.DataFrame:
    """An embeddings file (<id_column> string ids, then float columns) as a frame indexed by client id."""
    if not path.is_file():
        raise DataError(path, "missing")
    frame = pd.read_parquet(path)
    if id_column not in frame.columns:
        raise DataError(path, f"id column missing (dataset.id_column={id_column!r})", column=id_column)
    ids = frame[id_column]
    if not (pd.api.types.is_string_dtype(ids) and ids.map(lambda v: isinstance(v, str)).all()):
        raise DataError(path, f"client ids must be strings, found dtype {ids.dtype}", column=id_column)
    if ids.duplicated().any():
        row = int(np.argmax(ids.duplicated().to_numpy()))
        raise DataError(path, f"client id {ids.iloc[row]!r} appears twice", column=id_column, row=row + 2)
    values = frame.drop(columns=[id_column])
    non_numeric = [c for c in values.columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        raise DataError(path, "feature column is not numeric", column=non_numeric[0])
    values.columns = [f"{prefix}_{c}" for c in values.columns]
    values.index = pd.Index(ids.astype(str).to_numpy(), name="client_id")
    return values.astype(np.float32)


# embeddings/text_hashes.parquet, beside embeddings.parquet: the digest of the text each client's vector was
# computed from, so that a later embed recomputes only the clients whose texts changed (llm4trx.embed).
TEXT_HASHES = registry.file("embed", "text_hashes")


def text_digests(texts) -> list[str]:
    return [hashlib.sha256(t.encode("utf-8")).hexdigest()[:24] for t in texts]


def write_text_hashes(folder: Path, client_ids, digests: list[str]) -> None:
    frame = pd.DataFrame({"client_id": pd.array(client_ids, dtype="string"), "text_sha256": digests})
    frame.to_parquet(Path(folder) / TEXT_HASHES, index=False)


def read_text_hashes(folder: Path) -> dict[str, str]:
    """{client_id: digest} of a finished embed folder; {} where there is none (embeddings from before it)."""
    path = Path(folder) / TEXT_HASHES
    if not path.is_file():
        return {}
    frame = pd.read_parquet(path)
    if list(frame.columns) != ["client_id", "text_sha256"]:
        raise DataError(path, f"columns {list(frame.columns)}, expected ['client_id', 'text_sha256']")
    return dict(zip(frame["client_id"].astype(str), frame["text_sha256"].astype(str)))
