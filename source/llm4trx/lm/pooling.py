"""Pooling a causal LM's hidden states into one vector per sequence.

`hidden_states` is the tuple a HF model returns with `output_hidden_states=True`: index 0 is the embedding
output, index i the output of layer i (the last one after the final norm). A layer slice `[start, stop]`
selects from that tuple like Python's `hidden_states[start:stop]` (the seed's `from_layer_slice`); the
selected layers are averaged, then the tokens are pooled. `attention_mask` marks real tokens (1) and
padding (0) on either side, so left and right padding give the same vectors.
"""

from __future__ import annotations

from typing import Sequence

import torch

POOLINGS = ("mean", "last", "max", "mean_max")


def average_layers(hidden_states: Sequence[torch.Tensor], layer_slice: Sequence[int | None]) -> torch.Tensor:
    start, stop = layer_slice
    selected = hidden_states[slice(start, stop)]
    if len(selected) == 0:
        raise ValueError(f"layer slice {list(layer_slice)} selects no layer of {len(hidden_states)} hidden states")
    return torch.stack([h.float() for h in selected]).mean(0)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.bool().unsqueeze(-1)
    # masked_fill, not a multiplication: padded positions may hold NaN/inf (fully masked attention rows).
    summed = hidden.masked_fill(~mask, 0.0).sum(1)
    return summed / mask.sum(1).clamp(min=1)


def segment_parts(attention_mask: torch.Tensor, segments: int) -> torch.Tensor:
    """Each position's part: 0..segments-1 for the real tokens in order (equal contiguous parts, the later
    parts taking the remainder), `segments` for padding, whichever side the padding is on."""
    mask = attention_mask.bool()
    rank = mask.long().cumsum(1) - 1  # position among the real tokens
    length = mask.sum(1, keepdim=True).clamp(min=1)
    return torch.where(mask, rank * segments // length, segments)


def segment_mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, segments: int) -> torch.Tensor:
    """Means over `segments` contiguous, equal parts of each sequence's real tokens, concatenated in order
    (segments * hidden wide). Unlike one mean, the vector keeps where in the history something happened: the
    order of two blocks, or a burst near the end. A sequence shorter than `segments` leaves parts zero."""
    mask = attention_mask.bool()
    part = segment_parts(attention_mask, segments)  # padding goes to an extra, dropped part
    batch, _, width = hidden.shape
    sums = hidden.new_zeros(batch, segments + 1, width).scatter_add_(
        1, part.unsqueeze(-1).expand(-1, -1, width), hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
    )
    counts = torch.zeros(batch, segments + 1, device=hidden.device).scatter_add_(1, part, mask.float())
    means = sums[:, :segments] / counts[:, :segments].clamp(min=1).unsqueeze(-1)
    return means.reshape(batch, segments * width)


def segment_last_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, segments: int) -> torch.Tensor:
    """The last real token of each of `segments` contiguous parts, concatenated in order; empty parts zero."""
    part = segment_parts(attention_mask, segments)
    batch, length, width = hidden.shape
    positions = torch.arange(length, device=hidden.device).expand(batch, -1)
    last = torch.full((batch, segments + 1), -1, dtype=torch.long, device=hidden.device)
    last = last.scatter_reduce(1, part, positions, reduce="amax")[:, :segments]
    picked = hidden.gather(1, last.clamp(min=0).unsqueeze(-1).expand(-1, -1, width))
    return picked.masked_fill((last < 0).unsqueeze(-1), 0.0).reshape(batch, segments * width)


def segment_max_pool(hidden: torch.Tensor, attention_mask: torch.Tensor, segments: int) -> torch.Tensor:
    """The elementwise maximum over each of `segments` contiguous parts of the real tokens, concatenated in order
    (segments = 1: over the whole sequence). Where a mean over hundreds of tokens dilutes a few rare events, their
    activations survive a maximum. Padding (even NaN there) never counts; an empty part is zero."""
    mask = attention_mask.bool()
    part = segment_parts(attention_mask, segments)
    batch, _, width = hidden.shape
    lowest = hidden.new_full((batch, segments + 1, width), float("-inf"))
    parts = lowest.scatter_reduce(
        1,
        part.unsqueeze(-1).expand(-1, -1, width),
        hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")),
        reduce="amax",
    )[:, :segments]
    return parts.masked_fill(parts == float("-inf"), 0.0).reshape(batch, segments * width)


def last_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    # Position of the last real token, whichever side the padding is on.
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.bool() * positions).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pooled_width(method: str, hidden_size: int, segments: int = 1) -> int:
    """The width of `pool`'s vectors: hidden_size per part, twice for mean_max."""
    return hidden_size * segments * (2 if method == "mean_max" else 1)


def pool(
    hidden_states: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    method: str,
    layer_slice: Sequence[int | None],
    segments: int = 1,
) -> torch.Tensor:
    """One vector per sequence; `segments` > 1: each of that many contiguous parts of the real tokens pooled by
    `method`, concatenated in order (segments * hidden wide). mean_max: the mean vector, then the max vector
    (`pooled_width`: twice as wide)."""
    return pool_layer(average_layers(hidden_states, layer_slice), attention_mask, method, segments)


def pool_layer(hidden: torch.Tensor, attention_mask: torch.Tensor, method: str, segments: int = 1) -> torch.Tensor:
    """`pool` on one (batch, tokens, width) tensor of hidden states."""
    if method == "mean_max":
        return torch.cat([pool_layer(hidden, attention_mask, m, segments) for m in ("mean", "max")], dim=1)
    if method == "max":
        return segment_max_pool(hidden, attention_mask, segments)
    if segments > 1 and method == "mean":
        return segment_mean_pool(hidden, attention_mask, segments)
    if segments > 1 and method == "last":
        return segment_last_pool(hidden, attention_mask, segments)
    if method == "mean":
        return mean_pool(hidden, attention_mask)
    if method == "last":
        return last_pool(hidden, attention_mask)
    raise ValueError(f"unknown pooling {method!r}; choose one of {POOLINGS}")


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only. HF decoders number positions 0..T-1 regardless of the mask
    unless told otherwise, which shifts every left-padded sequence (generate() does the same fix)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
