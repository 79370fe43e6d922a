"""Packed batches: a batch's clients laid end to end in as few rows as fit, each client attending only to itself.

The text collator pads every client of a batch to the batch's longest; with one client per row and lengths
spread up to max_seq_len, ~40 % of the positions are padding (`bench/pretrain_padding.py`). Packing keeps the
batch (the same clients, in the same steps, so the sampling, the resumption and the ranks' shares are those
of the unpacked loader) and only changes its layout: the clients are placed first-fit decreasing into rows of
at most `width` tokens, and each row gets
- a block-diagonal causal 4D attention mask (a client sees its own earlier tokens, never another client's);
- position ids restarting at 0 for every client (as a client alone in a row has them);
- labels -100 at every client's first token, so no client's last token is trained to predict the next
  client's first (alone in a row, that position is never a target either).
The next-token targets, and so the loss, are then exactly those of the unpacked batch (tests/test_packing.py:
equal losses and gradients on a fixed batch). llm-foundry packs only for its own MPT (`sequence_id`); this is
the same idea for Hugging Face models through their 4D-mask input (sdpa: a boolean mask, eager: an additive
float mask; flash_attention_2 reads no 4D mask and is refused where the config is checked).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

IGNORE_INDEX = -100
MASK_KINDS = {"sdpa": "bool", "eager": "float"}


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Indices of `lengths` grouped first-fit decreasing into rows of at most `width` tokens (longest first,
    ties by index: deterministic). A length over `width` is an error (the dataset truncates to max_seq_len)."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = int(lengths[i])
        if n > width:
            raise ValueError(f"a sample of {n} tokens does not fit a packed row of {width}")
        for r, used in enumerate(fill):
            if used + n <= width:
                rows[r].append(i)
                fill[r] += n
                break
        else:
            rows.append([i])
            fill.append(n)
    return rows


def block_causal_mask(segments: torch.Tensor, kind: str) -> torch.Tensor:
    """(rows, 1, W, W) attention mask from per-position segment ids (rows, W): a query sees the keys of its own
    segment at or before it. Padding (segment -1) sees itself only, so no query row is empty (an all-masked
    row gives NaN in sdpa). kind bool: True = attend; float: 0 or the dtype's minimum, added to the scores."""
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & (segments[:, :, None] >= 0) & causal
    allowed |= torch.eye(width, dtype=torch.bool)
    if kind == "bool":
        return allowed[:, None]
    if kind == "float":
        mask = torch.zeros(allowed.shape, dtype=torch.float32)
        return mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)[:, None]
    raise ValueError(f"mask kind {kind!r}: bool or float")


class PackedCollator:
    """Wraps the text collator (RealTokensCollator over DataCollatorForLanguageModeling): the same batch,
    packed into rows of at most `width` tokens. Per-row keys: `total_tokens` and `loss_generating_tokens` (as
    the unpacked collator counts them, summed over the row), `samples` (clients in the row) and `doc_lengths`
    (their lengths), so that Composer counts clients, not rows (`packed_data_spec`)."""

    def __init__(self, base: Callable[[list[torch.Tensor]], dict[str, Any]], width: int, pad_id: int, mask: str):
        self.base, self.width, self.pad_id, self.mask = base, int(width), int(pad_id), mask

    def __call__(self, examples: list[torch.Tensor]) -> dict[str, Any]:
        flat = self.base(examples)
        lengths = [int(n) for n in flat["total_tokens"]]
        rows = pack_rows(lengths, self.width)
        width = max(sum(lengths[i] for i in row) for row in rows)
        shape = (len(rows), width)
        ids = torch.full(shape, self.pad_id, dtype=flat["input_ids"].dtype)
        labels = torch.full(shape, IGNORE_INDEX, dtype=flat["labels"].dtype)
        positions = torch.zeros(shape, dtype=torch.long)
        segments = torch.full(shape, -1, dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for s, i in enumerate(row):
                n, span = lengths[i], slice(start, start + lengths[i])
                ids[r, span] = flat["input_ids"][i, :n]
                labels[r, span] = flat["labels"][i, :n]
                labels[r, start] = IGNORE_INDEX  # never a target: alone in a row it is position 0
                positions[r, span] = torch.arange(n)
                segments[r, span] = s
                start += n
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": block_causal_mask(segments, self.mask),
            "position_ids": positions,
            "total_tokens": [sum(lengths[i] for i in row) for row in rows],
            "loss_generating_tokens": (labels != IGNORE_INDEX).sum(dim=1).tolist(),
            "samples": [len(row) for row in rows],
            "doc_lengths": [[lengths[i] for i in row] for row in rows],
        }


def clients_in_batch(batch: Mapping) -> int:
    return int(sum(batch["samples"]))


def split_rows(batch: Mapping, microbatch_size: int) -> list:
    """Composer's split into microbatches of `microbatch_size` rows, each cut to its own longest row; a batch of
    no more rows is one microbatch (Composer's own split warns on every such batch, and packed batches always have
    fewer rows). A row's tokens start at position 0, so the cut drops only trailing padding that no row's target
    attends to: the same loss and gradients, fewer positions computed (microbatches of 1 row: none padded)."""
    from composer.core.data_spec import _default_split_batch

    if len(batch["input_ids"]) <= microbatch_size:
        return [batch]
    return [to_longest_row(part) for part in _default_split_batch(batch, microbatch_size)]


def to_longest_row(rows: Mapping) -> dict:
    """Packed rows without the trailing columns that are padding in every row."""
    width = max(int(n) for n in rows["total_tokens"])
    out = dict(rows)
    if width < rows["input_ids"].shape[1]:
        for key in ("input_ids", "labels", "position_ids"):
            out[key] = rows[key][:, :width].contiguous()  # contiguous: Composer's metrics view() them
        out["attention_mask"] = rows["attention_mask"][..., :width, :width].contiguous()
    return out


def packed_data_spec(loader):
    """The data spec of a packed loader: llm-foundry's token counts (from total_tokens / loss_generating_tokens,
    as for unpacked batches), clients counted as samples (timestamps, sample counts), split by rows."""
    from composer.core import DataSpec
    from llmfoundry.data.utils import get_tokens_per_batch_func

    return DataSpec(
        dataloader=loader,
        get_num_samples_in_batch=clients_in_batch,
        get_num_tokens_in_batch=get_tokens_per_batch_func(),
        split_batch=split_rows,
    )
