"""The CoLES model of the `coles` stage, built from its config section with ptls 0.6.0's own classes:
TrxEncoder -> RnnSeqEncoder (gru | lstm) -> CoLESModule(Head(use_norm_encoder), ContrastiveLoss with hard
negatives), trained on ColesDataset(SampleSlices) over AugmentationDataset(DropoutTrx), Adam + StepLR.
Every value of ptls-experiments' mles_params.yaml that has a counterpart here is a key of `coles`
(conf/coles/ptls_*.yaml reproduce them; tests/data/ptls_published_configs.json names the source).

Two changes of speed, not of what is computed (tests/test_coles.py checks each against ptls's own class):
- FastHardNegativePairSelector: ptls's HardNegativePairSelector with the distance matrix from one matrix
  product instead of `outer_pairwise_distance` (an n*n*d expanded tensor; ~28 % of a training step in py-spy).
- LengthGroupedRnnEncoder: ptls's RnnEncoder reduced to each sequence's last step, with the batch's rows run
  through the RNN in groups of similar length, each group only as far as its own longest row
  (bench/coles_length_groups.py).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from ptls.frames.coles.sampling_strategies import HardNegativePairSelector
from ptls.nn.seq_encoder.containers import SeqEncoderContainer
from ptls.nn.seq_encoder.rnn_encoder import RnnEncoder
from ptls.nn.seq_step import LastStepEncoder

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


# Rows of a batch are run through the RNN in this many groups of similar length. A batch of SampleSlices has
# lengths spread evenly over [cnt_min, cnt_max], so padded to its longest row about a third of the RNN's steps
# x rows are padding; two groups skip about half of those. More groups skip more but run more, smaller
# steps: 2 was the fastest on the smoke preset's batches (bench/coles_length_groups.py).
LENGTH_GROUPS = 2


class LengthGroupedRnnEncoder(RnnEncoder):
    """ptls's RnnEncoder with its last-step reducer, computing only the steps each row needs: the rows sorted
    by length and split into `groups`, each group's RNN run to its own longest row. An RNN is causal and its
    rows independent, so every row's last hidden state is the one ptls computes (the gradients equal up to the
    order of float sums). Anything else ptls's RnnEncoder supports (sequence outputs, other reducers, a given
    h_0, bidirectional RNNs, empty rows) takes ptls's own path."""

    def __init__(self, *args, groups: int = LENGTH_GROUPS, **kwargs):
        super().__init__(*args, **kwargs)
        self.groups = int(groups)

    def forward(self, x, h_0=None):
        lengths = torch.as_tensor(x.seq_lens, device=x.payload.device)
        if (
            h_0 is not None
            or self.groups < 2
            or self.bidirectional
            or not self.is_reduce_sequence
            or not isinstance(self.reducer, LastStepEncoder)
            or lengths.numel() < 2
            or int(lengths.min()) < 1
        ):
            return super().forward(x, h_0)
        starter = None
        if self.trainable_starter == "static":  # as ptls: one learned state, tanh-squashed, for every row
            starter = torch.tanh(self.starter_h.expand(self.num_layers, lengths.numel(), -1).contiguous())
        order = torch.argsort(lengths, stable=True)
        last_states = []
        for rows in torch.tensor_split(order, self.groups):
            if rows.numel() == 0:
                continue
            steps = int(lengths[rows].max())
            inputs = x.payload[rows, :steps]
            if self.rnn_type == "gru":
                out, _ = self.rnn(inputs, None if starter is None else starter[:, rows])
            else:  # ptls starts an LSTM from zeros
                out, _ = self.rnn(inputs)
            last_states.append(out[torch.arange(rows.numel(), device=out.device), lengths[rows] - 1])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return torch.cat(last_states)[inverse]


class LengthGroupedRnnSeqEncoder(SeqEncoderContainer):
    """ptls's RnnSeqEncoder (TrxEncoder -> RnnEncoder, one vector per sequence) with LengthGroupedRnnEncoder:
    the same modules built in the same order, so a seed gives the same initial weights."""

    def __init__(self, trx_encoder, groups: int = LENGTH_GROUPS, **rnn_params):
        super().__init__(
            trx_encoder=trx_encoder,
            seq_encoder_cls=partial(LengthGroupedRnnEncoder, groups=groups),
            input_size=None,
            seq_encoder_params=rnn_params,
            is_reduce_sequence=True,
        )

    def forward(self, x, h_0=None):
        return self.seq_encoder(self.trx_encoder(x), h_0)


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


def build_trx_encoder(c: ColesSpec, sizes: dict[str, int]):
    """ptls's TrxEncoder of the CoLES inputs: categorical embeddings and numeric transforms."""
    from ptls.nn import TrxEncoder

    return TrxEncoder(
        embeddings=embedding_specs(c, sizes),
        numeric_values=numeric_inputs(c),
        embeddings_noise=float(c.embeddings_noise),
        norm_embeddings=bool(c.norm_embeddings),
        use_batch_norm_with_lens=bool(c.use_batch_norm_with_lens),
    )


def build_seq_encoder(c: ColesSpec, sizes: dict[str, int], groups: int = LENGTH_GROUPS):
    """TrxEncoder -> RNN as ptls's RnnSeqEncoder; groups=1 is ptls's RnnEncoder's own forward pass."""
    return LengthGroupedRnnSeqEncoder(
        trx_encoder=build_trx_encoder(c, sizes),
        groups=groups,
        hidden_size=int(c.hidden_size),
        type=str(c.encoder_type),  # gru | lstm: core/schema.py
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
    # DataFrame per row. Batches of similar lengths (each row's state does not depend on the others), put
    # back in the order of `records`.
    order = np.argsort([len(r["event_time"]) for r in records], kind="stable")
    chunks = [
        seq_encoder(collate_feature_dict([records[j] for j in order[i : i + batch_size]]).to(device))
        .float()
        .cpu()
        .numpy()
        for i in range(0, len(records), batch_size)
    ]
    matrix = np.empty((len(records), chunks[0].shape[1]), dtype=np.float32)
    matrix[order] = np.concatenate(chunks)
    return matrix
