"""Feature sets judged by the validation protocol: one DataFrame per set, indexed by client id (string).

llm: embeddings/embeddings.parquet of this run; aggregates: ptls's AggFeatureSeqEncoder statistics;
coles: coles/embeddings.parquet; random: Gaussian noise of the llm width (the floor); concatenations:
the columns of their parts side by side ("llm+aggregates").
"""

from __future__ import annotations


import numpy as np
import pandas as pd
import torch

from llm4trx.core.errors import ConfigError
from llm4trx.data.sequences import ptls_records


def aggregate_features(events: pd.DataFrame, categorical: list[str], numeric: list[str], fit_ids,
                       batch_size: int = 1024) -> pd.DataFrame:
    """Count, sum/mean/std of each numeric column, and per category value its count, mean and std (the
    agg_features baseline of ptls-experiments), computed by ptls on the raw amounts."""
    from ptls.data_load.utils import collate_feature_dict
    from ptls.nn.seq_encoder.agg_feature_seq_encoder import AggFeatureSeqEncoder

    records, sizes = ptls_records(events, categorical, numeric, fit_ids)
    encoder = AggFeatureSeqEncoder(
        embeddings={c: {"in": sizes[c]} for c in categorical},
        numeric_values={n: "identity" for n in numeric},
        was_logified=False,
    ).eval()
    # The encoder has no learnable part: a plain loop over collated batches (ptls's InferenceModule would
    # add a Lightning trainer and a DataFrame per row for the same matrix).
    chunks = []
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            chunks.append(encoder(collate_feature_dict(records[start : start + batch_size])).numpy())
    matrix = np.concatenate(chunks).astype(np.float32)
    ids = [r["client_id"] for r in records]
    return pd.DataFrame(matrix, index=pd.Index(ids, name="client_id"),
                        columns=[f"agg_{j:04d}" for j in range(matrix.shape[1])])


def random_features(client_ids, dim: int, seed: int) -> pd.DataFrame:
    ids = sorted(client_ids)
    matrix = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    return pd.DataFrame(matrix, index=pd.Index(ids, name="client_id"),
                        columns=[f"random_{j:04d}" for j in range(dim)])


def concatenate(name: str, available: dict[str, pd.DataFrame]) -> pd.DataFrame:
    parts = name.split("+")
    unknown = [p for p in parts if p not in available]
    if len(parts) < 2 or unknown:
        raise ConfigError(f"validate.concatenations entry {name!r}: want 'a+b' of feature sets "
                          f"{sorted(available)}; unknown {unknown}")
    return pd.concat([available[p] for p in parts], axis=1, join="inner")


def parts_of(cfg_validate) -> set[str]:
    """Every base feature set the config needs, concatenations included."""
    needed = set(cfg_validate.feature_sets)
    for name in cfg_validate.concatenations or []:
        needed.update(name.split("+"))
    return needed
