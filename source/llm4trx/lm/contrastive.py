"""The contrastive term of NTP + contrastive pretraining (`trainer.contrastive`, lm/foundry_plugins.py).

CoLES-style views of one client: each training row (one client's tokens: bos + text + eos, right padded,
llm-foundry's text collator) gives `views` random contiguous crops of its real tokens, each of a length drawn
uniformly between `min_fraction` and `max_fraction` of the row's real length and placed uniformly inside it.
Crops are cut at token level (a crop may begin or end inside a transaction; the field format's ~3 tokens per
transaction make that a small edge). Each crop runs through the model's backbone as a sequence of its own
(positions from 0, right padded, attention-masked), is pooled as `embed` pools (lm/pooling.py:
`embed.pooling` over the `embed.layer_slice` layers; one vector per view, not `embed.segments` parts, as crops
start at random offsets and their parts would not align), L2-normalised, and ptls's `SoftmaxLoss` (InfoNCE:
each pair of views of a client against the views of every other client in the microbatch, divided by
`temperature`) is the loss. Negatives are in-batch per rank and per microbatch; nothing is gathered across ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from llm4trx.core.errors import ConfigError
from llm4trx.lm.pooling import POOLINGS, pool

KEY = "trainer.contrastive"


@dataclass(frozen=True)
class ContrastiveSettings:
    weight: float
    views: int
    min_fraction: float
    max_fraction: float
    temperature: float
    pooling: str
    layer_slice: tuple


def _number(values: Mapping[str, Any], name: str, kind=float):
    value = values.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ConfigError(f"{KEY}.{name}={value!r}: want {'a number' if kind is float else 'an integer'}")
    return kind(value)


def settings_from(values: Optional[Mapping[str, Any]]) -> Optional[ContrastiveSettings]:
    """Checked settings, or None when the term is off (no config, or weight 0)."""
    if values is None:
        return None
    weight = _number(values, "weight")
    if weight < 0 or not math.isfinite(weight):
        raise ConfigError(f"{KEY}.weight={weight}: the contrastive term's weight, >= 0 (0: off)")
    if weight == 0:
        return None
    views = _number(values, "views", int)
    if views < 2:
        raise ConfigError(f"{KEY}.views={views}: views per client, >= 2 (a positive pair needs two)")
    lo, hi = _number(values, "min_fraction"), _number(values, "max_fraction")
    if not 0 < lo <= hi <= 1:
        raise ConfigError(
            f"{KEY}.min_fraction={lo}, max_fraction={hi}: crop lengths as fractions of a client's tokens, "
            "0 < min_fraction <= max_fraction <= 1"
        )
    temperature = _number(values, "temperature")
    if not temperature > 0:
        raise ConfigError(f"{KEY}.temperature={temperature}: the softmax temperature, > 0")
    pooling = values.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise ConfigError(f"embed.pooling={pooling!r} (pooled by {KEY}); choose one of {POOLINGS}")
    layer_slice = tuple(values.get("layer_slice", (-1, None)))
    if len(layer_slice) != 2:
        raise ConfigError(f"embed.layer_slice={list(layer_slice)} (pooled by {KEY}); want [start, stop]")
    return ContrastiveSettings(weight, views, lo, hi, temperature, pooling, layer_slice)


def crop_views(
    input_ids: torch.Tensor, lengths: torch.Tensor, s: ContrastiveSettings, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`views` crops of every row's real tokens (the first `lengths[i]` positions: right padding).

    Returns (ids, mask, owner): crops as rows (view v of row i at row i * views + v), right padded to the
    longest crop, the mask of their real tokens, and the row each crop came from. Random draws on the CPU
    (the global generator unless one is given: Composer seeds and checkpoints it).
    """
    n_rows = input_ids.shape[0]
    lengths = lengths.detach().to("cpu", torch.long).clamp(min=1).repeat_interleave(s.views)
    lo = torch.ceil(lengths * s.min_fraction).long().clamp(min=1)
    hi = torch.maximum(torch.floor(lengths * s.max_fraction).long(), lo)
    size = lo + (torch.rand(lengths.shape, generator=generator) * (hi - lo + 1)).long().clamp(max=hi - lo)
    start = (torch.rand(lengths.shape, generator=generator) * (lengths - size + 1)).long().clamp(max=lengths - size)
    width = int(size.max())
    offsets = torch.arange(width)
    mask = offsets.unsqueeze(0) < size.unsqueeze(1)
    # Padded places repeat the crop's last token (any real id works: they are masked out and come last).
    positions = start.unsqueeze(1) + torch.minimum(offsets.unsqueeze(0), (size - 1).unsqueeze(1))
    owner = torch.arange(n_rows).repeat_interleave(s.views)
    device = input_ids.device
    ids = input_ids[owner.to(device).unsqueeze(1), positions.to(device)]
    return ids, mask.to(device, torch.long), owner.to(device)


def info_nce(pooled: torch.Tensor, owner: torch.Tensor, temperature: float) -> torch.Tensor:
    """ptls's SoftmaxLoss (InfoNCE) over L2-normalised vectors, the views of a row being its positives."""
    from ptls.frames.coles.losses import SoftmaxLoss

    return SoftmaxLoss(temperature=temperature)(torch.nn.functional.normalize(pooled.float(), dim=1), owner)


def view_loss(model, input_ids: torch.Tensor, lengths: torch.Tensor, s: ContrastiveSettings) -> torch.Tensor:
    """The contrastive loss of one (micro)batch: crops -> the backbone (no LM head) -> pooled -> InfoNCE."""
    ids, mask, owner = crop_views(input_ids, lengths, s)
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model
    out = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return info_nce(pool(out.hidden_states, mask, s.pooling, s.layer_slice), owner, s.temperature)
