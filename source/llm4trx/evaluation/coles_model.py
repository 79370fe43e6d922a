"""The CoLES model of the `coles` stage, built from its config section with ptls 0.6.0's own classes:
TrxEncoder -> RnnSeqEncoder (gru | lstm) -> CoLESModule(Head(use_norm_encoder), ContrastiveLoss with hard
negatives), trained on ColesDataset(SampleSlices) over AugmentationDataset(DropoutTrx), Adam + StepLR.
Every value of ptls-experiments' mles_params.yaml that has a counterpart here is a key of `coles`
(conf/coles/ptls_*.yaml reproduce them; tests/data/ptls_published_configs.json names the source).

FastHardNegativePairSelector: ptls's HardNegativePairSelector with the distance matrix from one matrix
product instead of `outer_pairwise_distance` (an n*n*d expanded tensor; ~28 % of a training step in py-spy).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from ptls.frames.coles.sampling_strategies import HardNegativePairSelector

from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import ColesSpec

# torch.pairwise_distance's default eps: it computes ||a - b + eps||, which the fast selector reproduces.
PAIRWISE_EPS = 1e-6


def pairwise_distances(x: torch.Tensor, eps: float = PAIRWISE_EPS) -> torch.Tensor:
    """The n x n matrix torch.pairwise_distance(x[i], x[j]) = ||x_i - x_j + eps|| by matrix products:
    ||a - b||^2 + 2 eps (sum a - sum b) + d eps^2, expanded (no n*n*d tensor)."""
    sq = (x * x).sum(dim=1)
    s = x.sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t()) + 2.0 * eps * (s[:, None] - s[None, :]) + x.size(1) * eps**2
    return d2.clamp_min(0).sqrt()


class FastHardNegativePairSelector(HardNegativePairSelector):
    """HardNegativePairSelector's pairs (all positive pairs, the `neg_count` nearest negatives of each
    example) with the distances of `pairwise_distances`: same pairs, same loss (tests/test_coles.py)."""

    def get_pairs(self, embeddings, labels):
        n = labels.size(0)
        same = labels[None, :] == labels[:, None]
        positive_pairs = torch.triu(same.int(), diagonal=1).nonzero(as_tuple=False)
        distances = pairwise_distances(embeddings.detach())
        upper_bound = int((2 * n) ** 0.5) + 1  # as ptls: larger = nearer, 0 on positives
        scores = (upper_bound - distances) * (~same).to(distances.dtype)
        _, indices = scores.topk(k=self.neg_count, dim=0, largest=True)
        negative_pairs = torch.stack(
            [
                torch.arange(0, n, dtype=indices.dtype, device=indices.device).repeat(self.neg_count),
                torch.cat(indices.unbind(dim=0)),
            ]
        ).t()
        return positive_pairs, negative_pairs


def numeric_transforms(numeric) -> dict[str, str]:
    """coles.numeric as {column: ptls numeric transform}: a list means "log" for each (sign * log1p|x|, the
    same as ptls-experiments' log-normed column with `identity`)."""
    if numeric is None:
        return {}
    if isinstance(numeric, str):
        raise ConfigError(f"coles.numeric: a list of columns or a mapping column -> transform, got {numeric!r}")
    if hasattr(numeric, "items"):
        return {str(k): str(v) for k, v in numeric.items()}
    return {str(n): "log" for n in numeric}


# coles.time_numeric's transform per feature: gaps are heavy-tailed (log), the others bounded (identity); the
# TrxEncoder's batch norm of numeric inputs (use_batch_norm, ptls default) scales them.
TIME_NUMERIC_TRANSFORMS = {"day_gap": "log", "hour": "identity", "weekday": "identity", "day_index": "identity"}


def numeric_inputs(c: ColesSpec) -> dict[str, str]:
    """Every numeric input of the TrxEncoder: coles.numeric, then coles.time_numeric."""
    return {**numeric_transforms(c.numeric), **{f: TIME_NUMERIC_TRANSFORMS[f] for f in (c.time_numeric or [])}}


def embedding_specs(c: ColesSpec, sizes: dict[str, int]) -> dict[str, dict]:
    """{column: {"in", "out"}} for TrxEncoder: coles.embeddings.<column> where given (published fixed sizes:
    codes beyond `in` are clipped to the last, ptls's out_of_index="clip"), else the fitted dictionary size and
    min(coles.category_embedding_dim, size)."""
    given = dict(c.embeddings or {})
    unknown = sorted(set(given) - set(sizes))
    if unknown:
        raise ConfigError(
            f"coles.embeddings: {unknown} not among the CoLES columns {sorted(sizes)} "
            f"(coles.categorical, the dataset's categoricals, coles.time_features)"
        )
    specs = {}
    for col, size in sizes.items():
        if col in given:
            spec = given[col]
            specs[col] = {"in": int(spec["in"]), "out": int(spec["out"])}
        else:
            specs[col] = {"in": int(size), "out": min(int(c.category_embedding_dim), int(size))}
    return specs


def build_seq_encoder(c: ColesSpec, sizes: dict[str, int]):
    from ptls.nn import RnnSeqEncoder, TrxEncoder

    encoder_type = str(c.encoder_type)  # gru | lstm: core/schema.py
    trx_encoder = TrxEncoder(
        embeddings=embedding_specs(c, sizes),
        numeric_values=numeric_inputs(c),
        embeddings_noise=float(c.embeddings_noise),
        norm_embeddings=bool(c.norm_embeddings),
        use_batch_norm_with_lens=bool(c.use_batch_norm_with_lens),
    )
    return RnnSeqEncoder(
        trx_encoder=trx_encoder,
        hidden_size=int(c.hidden_size),
        type=encoder_type,
        bidir=bool(c.bidir),
        trainable_starter=str(c.trainable_starter),
    )


def build_module(c: ColesSpec, seq_encoder):
    from ptls.frames.coles import CoLESModule
    from ptls.frames.coles.losses import ContrastiveLoss
    from ptls.nn import Head

    return CoLESModule(
        seq_encoder=seq_encoder,
        head=Head(use_norm_encoder=bool(c.use_norm_encoder)),
        loss=ContrastiveLoss(
            margin=float(c.loss["margin"]),
            sampling_strategy=FastHardNegativePairSelector(neg_count=int(c.loss["neg_count"])),
        ),
        optimizer_partial=partial(torch.optim.Adam, lr=float(c.lr), weight_decay=float(c.weight_decay)),
        lr_scheduler_partial=partial(
            torch.optim.lr_scheduler.StepLR, step_size=int(c.lr_step_size), gamma=float(c.lr_step_gamma)
        ),
    )


def build_datamodule(c: ColesSpec, records: list[dict]):
    from ptls.data_load.augmentations import DropoutTrx
    from ptls.data_load.datasets import AugmentationDataset, MemoryMapDataset
    from ptls.frames import PtlsDataModule
    from ptls.frames.coles import ColesDataset
    from ptls.frames.coles.split_strategy import SampleSlices

    data = MemoryMapDataset(data=records)
    if float(c.trx_dropout) > 0:
        # As ptls-experiments' dataset_unsupervised: the dropout applies to the whole history, before slicing.
        data = AugmentationDataset(data, f_augmentations=[DropoutTrx(trx_dropout=float(c.trx_dropout))])
    return PtlsDataModule(
        train_data=ColesDataset(
            data, splitter=SampleSlices(split_count=int(c.split_count), cnt_min=int(c.cnt_min), cnt_max=int(c.cnt_max))
        ),
        train_batch_size=int(c.batch_size),
        train_num_workers=int(c.num_workers),
    )


def train_encoder(
    records: list[dict], sizes: dict, c: ColesSpec, seed: int, progress: bool, callbacks: list | None = None
):
    """The sequence encoder trained contrastively on `records` (already filtered by length)."""
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    seq_encoder = build_seq_encoder(c, sizes)
    module = build_module(c, seq_encoder)
    trainer = pl.Trainer(
        max_epochs=int(c.max_epochs),
        accelerator="auto",
        devices=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        callbacks=callbacks or [],
    )
    trainer.fit(module, build_datamodule(c, records))
    return seq_encoder


@torch.no_grad()
def infer(seq_encoder, records: list[dict], batch_size: int, max_len: int | None = None) -> np.ndarray:
    """One embedding per record, in order; `max_len`: only the last max_len transactions of each client
    (ptls-experiments' inference ISeqLenLimit, strategy "tail")."""
    from ptls.data_load.augmentations import SeqLenLimit
    from ptls.data_load.utils import collate_feature_dict

    if max_len:
        limit = SeqLenLimit(int(max_len), strategy="tail")
        records = [limit(r) for r in records]
    seq_encoder.eval()
    device = next(seq_encoder.parameters()).device
    # A plain loop rather than ptls's InferenceModule + Trainer.predict: same encoder call, without a
    # DataFrame per row, and the rows stay aligned with `records`.
    chunks = [
        seq_encoder(collate_feature_dict(records[i : i + batch_size]).to(device)).float().cpu().numpy()
        for i in range(0, len(records), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float32)
