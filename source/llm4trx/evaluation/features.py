"""Feature sets judged by the validation protocol: one DataFrame per set, indexed by client id (string).

llm: embeddings/embeddings.parquet of this run; aggregates: ptls's AggFeatureSeqEncoder statistics;
coles: coles/embeddings.parquet; random: Gaussian noise of the llm width (the floor); oracle: the synthetic
generator's hidden factors (dataset.raw_dir/_FACTORS.csv, the ceiling; synthetic data only); concatenations:
the columns of their parts side by side ("llm+aggregates").
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from llm4trx.core.errors import ConfigError
from llm4trx.data.sequences import ptls_records


def aggregate_features(
    events: pd.DataFrame,
    categorical: list[str],
    numeric: list[str],
    fit_ids,
    batch_size: int = 1024,
    sizes: dict | None = None,
) -> pd.DataFrame:
    """Count, sum/mean/std of each numeric column, and per category value its count, mean and std (the
    agg_features baseline of ptls-experiments), computed by ptls on the raw amounts. `sizes`
    (validate.aggregates.sizes): a fixed `in` per categorical column, as published (codes are frequency ranks, so
    the rarer values beyond it share the last slot); a column not there keeps its fitted dictionary size."""
    import torch  # here, not at the top: validate imports this module and needs no torch (seconds per start)
    from ptls.data_load.utils import collate_feature_dict
    from ptls.nn.seq_encoder.agg_feature_seq_encoder import AggFeatureSeqEncoder

    records, fitted = ptls_records(events, categorical, numeric, fit_ids)
    sizes = dict(sizes or {})
    unknown = sorted(set(sizes) - set(categorical))
    if unknown:
        raise ConfigError(f"validate.aggregates.sizes: {unknown} not among the aggregate columns {categorical}")
    encoder = AggFeatureSeqEncoder(
        embeddings={c: {"in": int(sizes.get(c, fitted[c]))} for c in categorical},
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
    return pd.DataFrame(
        matrix, index=pd.Index(ids, name="client_id"), columns=[f"agg_{j:04d}" for j in range(matrix.shape[1])]
    )


# The random floor's seed when it is built once per dataset (validate.random_dim set, lightgbm_seed=fixed: the
# baselines stage): noise does not depend on the run seed, so neither does this draw.
SHARED_RANDOM_SEED = 0


def random_width_mismatch(llm_width: int, random_width: int) -> str | None:
    """A warning when the random floor and the llm vectors differ in width (validate.random_dim fixed while the
    model or pooling changed the llm's): LightGBM overfits noise more with more columns, so the floor moves."""
    if llm_width == random_width:
        return None
    return (
        f"the random floor is {random_width} wide and the llm vectors {llm_width} (validate.random_dim="
        f"{random_width}); set validate.random_dim={llm_width}, or null for a floor as wide as the llm's, drawn "
        "per seed"
    )


def random_features(client_ids, dim: int, seed: int) -> pd.DataFrame:
    ids = sorted(client_ids)
    matrix = np.random.default_rng(seed).standard_normal((len(ids), dim)).astype(np.float32)
    return pd.DataFrame(matrix, index=pd.Index(ids, name="client_id"), columns=[f"random_{j:04d}" for j in range(dim)])


def oracle_features(raw_dir, id_column: str) -> pd.DataFrame:
    """The synthetic generator's hidden factors per client (written beside the raw files): the ceiling."""
    from pathlib import Path

    from llm4trx.core.errors import DataError
    from llm4trx.data.synthetic import FACTORS

    path = Path(raw_dir) / FACTORS
    if not path.is_file():
        raise ConfigError(
            f"feature set oracle needs the synthetic generator's {path} (dataset=synthetic); "
            "drop oracle from validate.feature_sets for other data"
        )
    frame = pd.read_csv(path, dtype={id_column: str})
    if id_column not in frame.columns:
        raise DataError(path, "client id column missing", column=id_column)
    factors = [c for c in frame.columns if c.startswith("z_")]
    out = frame.set_index(id_column)[factors].astype(np.float32)
    out.index = out.index.rename("client_id")
    out.columns = [f"oracle_{c[2:]}" for c in factors]
    return out


def concatenate(name: str, available: dict[str, pd.DataFrame]) -> pd.DataFrame:
    parts = name.split("+")
    unknown = [p for p in parts if p not in available]
    if len(parts) < 2 or unknown:
        raise ConfigError(
            f"validate.concatenations entry {name!r}: want 'a+b' of feature sets {sorted(available)}; unknown {unknown}"
        )
    return pd.concat([available[p] for p in parts], axis=1, join="inner")


def parts_of(feature_sets, concatenations) -> set[str]:
    """Every base feature set the config needs (validate.feature_sets, validate.concatenations)."""
    needed = set(feature_sets)
    for name in concatenations or []:
        needed.update(name.split("+"))
    return needed
