"""Client texts within a token budget, one chunk of clients at a time (the text stage's core, shared by engines).

`build_texts(events, fmt, ctx, counter, max_tokens)` renders every client of `events` (sorted by client,
time) in `fmt` and truncates it to `max_tokens` tokens of `counter`, keeping the MOST RECENT transactions:
every line is counted in context, a reverse cumulative sum per client picks the newest lines that fit with
the header. A client's text depends only on its own events and the dataset-level RenderContext, so any
partition of the clients into chunks gives the same rows: `render_chunk` is the per-chunk entry point the
text stage (and other engines, e.g. a Spark mapInPandas) call, `TextStats` accumulates stats.json's figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from llm4trx.core.errors import ConfigError
from llm4trx.render.columns import Fields, RenderContext
from llm4trx.render.formats import GROUP_ITEM_SEP, Format, assemble
from llm4trx.render.tokencount import TokenCounter, piece_tokens

SPECIAL_TOKENS = 2  # bos + eos around every sample (llm4trx.shards, llm4trx.embed), inside text.max_tokens
PERCENTILES = (50, 90, 95, 99)
# Only the newest lines within max_tokens * (bytes per token, estimated on a sample, at most this) bytes are
# counted at first; clients whose window turns out to hold fewer than max_tokens tokens are counted in full.
# Token counting is the stage's main cost.
WINDOW_BYTES_PER_TOKEN = 6.0
# Margin on the largest bytes/token ratio of the sample. Clients whose text is denser than that fall back to a
# full count, which is exact but slower; a tight margin saves counting (1.5 counted 1.7x the kept text's bytes
# on the benchmark, 1.15 about 1.3x with under 1% of clients falling back).
WINDOW_MARGIN = 1.15
# The lines first counted are those within TIGHT_WINDOW x that window (the sample's largest bytes/token, no margin);
# only the clients whose tight window holds fewer tokens than the budget are counted again over the full window.
TIGHT_WINDOW = 0.85


def _lengths(counter: TokenCounter, arr: pa.Array) -> np.ndarray:
    fn = pc.binary_length if counter.unit == "bytes" else pc.utf8_length
    return fn(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def build_texts(
    events: pd.DataFrame,
    fmt: Format,
    ctx: RenderContext,
    counter: TokenCounter,
    max_tokens: int | None,
    progress: bool = False,
    ratio: float | None = None,
    line_cap: int | None = None,
) -> pd.DataFrame:
    """client_id, text, n_events, n_events_kept, n_tokens for every client of `events` (sorted by client, time).

    `ratio`: the bytes (chars) per token that sizes the counting window (estimated on a sample of these
    clients when None). It only decides how much is counted before the exact checks, never the result.
    `line_cap`: render only each client's newest `line_cap` lines (estimate_line_cap); a client whose counting
    window reaches past them, or whose window holds fewer tokens than the budget, is redone on its whole
    history, so the result is the same as without the cap, which only saves rendering lines truncation drops.
    """
    steps = tqdm(total=4, desc=f"text[{fmt.name}]", disable=not progress, leave=False)
    whole = fields = Fields(events, ctx)
    n_clients = len(whole.client_ids)
    hidden = np.zeros(n_clients, bool)  # clients with older lines not rendered (line_cap)
    if max_tokens is not None and line_cap is not None and n_clients and (whole.n_events > line_cap).any():
        shown = np.minimum(whole.n_events, line_cap)
        rows = (
            np.repeat(whole.offsets[1:] - shown, shown)
            + np.arange(shown.sum())
            - np.repeat(np.r_[0, np.cumsum(shown)[:-1]], shown)
        )
        fields, hidden = whole.subset(rows), whole.n_events > line_cap
    offsets, n_rows = fields.offsets, len(fields.ev)
    head, lines, units, tail, last_of_client = _pieces(fmt, fields, fmt.head(whole))
    steps.update()

    client_of = np.repeat(np.arange(n_clients), fields.n_events)
    selected = np.ones(n_rows, bool)
    if max_tokens is not None:  # count only a window of newest lines that surely holds max_tokens tokens
        line_bytes = np.r_[0, np.cumsum(_lengths(counter, units))]
        suffix_bytes = line_bytes[offsets[1:]][client_of] - line_bytes[:-1]
        if ratio is None:
            ratio = window_ratio(counter, head, units, tail, offsets)
        selected = (suffix_bytes <= max_tokens * ratio) | last_of_client
    # the window reaches the oldest rendered line of a client with older lines: redo it on its whole history
    redo = hidden & selected[offsets[:-1]] if hidden.any() else hidden
    everyone = np.arange(n_clients)
    generous = selected
    if max_tokens is not None and TIGHT_WINDOW < 1:  # first a tighter window; the generous one where it falls short
        selected = (suffix_bytes <= max_tokens * ratio * TIGHT_WINDOW) | last_of_client
    head_tok, tail_tok, unit_tok, unclean = _count_pieces(counter, head, units, tail, client_of, everyone, selected)
    window_tok = np.bincount(client_of[selected], weights=unit_tok[selected], minlength=n_clients)
    if selected is not generous:
        outside = np.bincount(client_of, weights=~selected, minlength=n_clients) > 0
        wider = np.flatnonzero(outside & (head_tok + tail_tok + window_tok <= max_tokens) & ~redo)
        if len(wider):
            mask = np.isin(client_of, wider)
            selected = np.where(mask, generous, selected)
            h, t, u, uc = _count_pieces(counter, head, units, tail, client_of, wider, mask & generous)
            head_tok[wider], tail_tok[wider], unclean[wider] = h, t, uc
            unit_tok[mask] = u[mask]
            window_tok = np.bincount(client_of[selected], weights=unit_tok[selected], minlength=n_clients)
    outside = np.bincount(client_of, weights=~selected, minlength=n_clients) > 0
    short = outside & (head_tok + tail_tok + window_tok <= max_tokens if max_tokens else False)
    redo |= short & hidden
    short = np.flatnonzero(short & ~redo)
    if len(short):  # the window held fewer tokens than the budget: count these clients' whole history
        mask = np.isin(client_of, short)
        h, t, u, uc = _count_pieces(counter, head, units, tail, client_of, short, mask)
        head_tok[short], tail_tok[short], unit_tok[mask], unclean[short] = h, t, u[mask], uc
    steps.update()

    if fmt.grouped:  # charge each MCC group's label to its newest event
        labels = pc.binary_join_element_wise(fields.mcc, ": ", "")
        label_tok = _unique_counts(counter, labels) + 1  # + the line break between groups
        newest = ~pd.DataFrame({"c": client_of, "m": fields.ev["mcc"].to_numpy()})[::-1].duplicated().to_numpy()[::-1]
        unit_tok = np.where(unit_tok >= 0, unit_tok + np.where(newest, label_tok, 0), unit_tok)
        unclean[:] = True  # regrouping changes the text around each line: always verify
    fixed = head_tok + tail_tok
    if max_tokens is not None and n_clients and fixed.max() > max_tokens:
        raise ConfigError(
            f"text.max_tokens={max_tokens} is smaller than the {fmt.name!r} header "
            f"({int(fixed.max())} tokens); raise it"
        )

    budget = np.inf if max_tokens is None else max_tokens
    unit_tok[unit_tok < 0] = max_tokens + 1 if max_tokens else 0  # uncounted lines (outside the window) never fit
    csum = np.r_[0, np.cumsum(unit_tok)]
    suffix = csum[offsets[1:]][client_of] - csum[:-1]  # tokens of this line and every newer line
    keep = suffix + fixed[client_of] <= budget
    kept_tok = np.bincount(client_of, weights=np.where(keep, unit_tok, 0), minlength=n_clients).astype(np.int64)
    n_tokens = fixed + kept_tok
    truncated = (np.bincount(client_of, weights=~keep, minlength=n_clients) > 0) | hidden
    steps.update()

    texts = assemble(fmt, fields, head, lines, keep)
    # A truncated text joins the header to a line it did not follow before: check that seam.
    kept_idx = np.flatnonzero(keep)
    first_kept = np.full(n_clients, n_rows)
    np.minimum.at(first_kept, client_of[kept_idx], kept_idx)
    seam = np.flatnonzero(truncated & ~unclean & (first_kept < n_rows) & ~redo)
    if len(seam):
        joined = pc.binary_join_element_wise(head.take(pa.array(seam)), units.take(pa.array(first_kept[seam])), "")
        seam_tok = counter.count(joined.to_pylist())
        unclean[seam[seam_tok != head_tok[seam] + unit_tok[first_kept[seam]]]] = True
    texts, n_tokens, keep = _fit_exactly(
        fmt, fields, head, lines, counter, texts, n_tokens, keep, unclean, csum, client_of, budget
    )
    steps.update()
    steps.close()
    n_kept = np.bincount(client_of, weights=keep, minlength=n_clients).astype(np.int64)
    texts, n_tokens, fixed = texts.to_pylist(), n_tokens.astype(np.int64), fixed.astype(np.int64)
    again = np.flatnonzero(redo)
    if len(again):
        rows = np.concatenate([np.arange(whole.offsets[c], whole.offsets[c + 1]) for c in again])
        redone = build_texts(events.iloc[rows], fmt, ctx, counter, max_tokens, ratio=ratio)
        for c, text in zip(again, redone["text"]):
            texts[c] = text
        n_kept[again], n_tokens[again] = redone["n_events_kept"].to_numpy(), redone["n_tokens"].to_numpy()
        fixed[again] = redone["n_header_tokens"].to_numpy()
    frame = pd.DataFrame(
        {
            "client_id": whole.client_ids.astype(str),
            "text": texts,
            "n_events": whole.n_events,
            "n_events_kept": n_kept,
            "n_tokens": n_tokens,
            "n_header_tokens": fixed,
        }
    )
    return frame


def _pieces(fmt: Format, fields: Fields, head: pa.Array | None = None):
    """head, lines, units (each line with the separator that follows it in the text), tail, last_of_client."""
    n_clients, offsets = len(fields.client_ids), fields.offsets
    head, lines = fmt.head(fields) if head is None else head, fmt.line(fields)
    tail = pa.array([fmt.tail] * n_clients, pa.string())
    last_of_client = np.zeros(len(lines), bool)
    last_of_client[offsets[1:][fields.n_events > 0] - 1] = True
    # Each line is counted with the separator that follows it in the text (none after the client's last).
    sep = GROUP_ITEM_SEP if fmt.grouped else fmt.sep
    units = pc.if_else(pa.array(last_of_client), lines, pc.binary_join_element_wise(lines, sep, ""))
    return head, lines, units, tail, last_of_client


def estimate_ratio(
    events: pd.DataFrame, fmt: Format, ctx: RenderContext, counter: TokenCounter, n_sample: int = 64
) -> float:
    """window_ratio of a sample of the clients of `events`: compute it once (on a first chunk) and pass it
    to every chunk's build_texts/render_chunk, so each chunk does not count a sample of its own."""
    if not len(events):
        return WINDOW_BYTES_PER_TOKEN
    fields = Fields(events.iloc[_sample_rows(events, n_sample)].reset_index(drop=True), ctx)
    head, _, units, tail, _ = _pieces(fmt, fields)
    return window_ratio(counter, head, units, tail, fields.offsets, n_sample)


def estimate_line_cap(
    events: pd.DataFrame,
    fmt: Format,
    ctx: RenderContext,
    counter: TokenCounter,
    max_tokens: int | None,
    ratio: float,
    n_sample: int = 64,
) -> int | None:
    """How many newest lines per client to render (build_texts' line_cap): the counting window
    (max_tokens x ratio bytes) holds at most window / shortest line + 1 lines; the shortest line is measured
    on a sample of clients, and clients with shorter lines are redone whole, so any cap gives the same texts."""
    if max_tokens is None or not len(events):
        return None
    sample = _sample_rows(events, n_sample)
    fields = Fields(events.iloc[sample].reset_index(drop=True), ctx)
    _, _, units, _, _ = _pieces(fmt, fields)
    shortest = max(int(_lengths(counter, units).min()), 1) if len(units) else 1
    return int(max_tokens * ratio // shortest) + 2


def _sample_rows(events: pd.DataFrame, n_sample: int) -> np.ndarray:
    """The rows of up to n_sample clients spread over `events`."""
    client = events["client_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, client[1:] != client[:-1]])
    ends = np.r_[starts[1:], len(client)]
    pick = np.unique(np.linspace(0, len(starts) - 1, min(n_sample, len(starts))).astype(np.int64))
    return np.concatenate([np.arange(starts[c], ends[c]) for c in pick])


def window_ratio(counter, head, units, tail, offsets, n_sample: int = 64) -> float:
    """A generous bytes (chars) per token of these texts: WINDOW_MARGIN x the largest ratio among a sample of clients."""
    n_clients = len(head)
    sample = np.unique(np.linspace(0, n_clients - 1, min(n_sample, n_clients)).astype(np.int64))
    texts = [
        h + "".join(units[offsets[c] : offsets[c + 1]].to_pylist()) + t
        for c, h, t in zip(sample, head.take(pa.array(sample)).to_pylist(), tail.take(pa.array(sample)).to_pylist())
    ]
    size = np.array([len(t.encode()) if counter.unit == "bytes" else len(t) for t in texts])
    tokens = np.maximum(counter.count(texts), 1)
    return float(np.clip(WINDOW_MARGIN * (size / tokens).max(), 1.0, WINDOW_BYTES_PER_TOKEN))


def _count_pieces(counter, head, units, tail, client_of, clients, selected):
    """Tokens of the pieces head, selected units..., tail of `clients` (sorted), each client encoded as one text.

    Returns head and tail tokens per client in `clients`, tokens per event (-1 where not selected) and whether
    a token straddles two pieces of the client (then its count is verified on the final text).
    """
    n_clients, n_events = len(head), len(units)
    events = np.flatnonzero(selected)
    n_sel = np.bincount(client_of[events], minlength=n_clients)[clients]
    piece_off = np.r_[0, np.cumsum(n_sel + 2)]
    rank = np.full(n_clients, -1)
    rank[clients] = np.arange(len(clients))
    r = rank[client_of[events]]
    slot = piece_off[r] + 1 + np.arange(len(events)) - np.r_[0, np.cumsum(n_sel)][r]
    order = np.empty(piece_off[-1], np.int64)
    order[piece_off[:-1]] = clients
    order[piece_off[1:] - 1] = n_clients + n_events + clients
    order[slot] = n_clients + events
    laid = pa.concat_arrays([head, units, tail]).take(pa.array(order))
    texts = pc.binary_join(pa.ListArray.from_arrays(pa.array(piece_off.astype(np.int32)), laid), "")
    counts, crossed = piece_tokens(counter, texts.to_pylist(), _lengths(counter, laid))
    unit_tok = np.full(n_events, -1, np.int64)
    unit_tok[events] = counts[slot]
    unclean = np.logical_or.reduceat(crossed, piece_off[:-1]) if len(clients) else np.zeros(0, bool)
    return counts[piece_off[:-1]], counts[piece_off[1:] - 1], unit_tok, unclean


def _unique_counts(counter: TokenCounter, values: pa.Array) -> np.ndarray:
    enc = pc.dictionary_encode(values)
    per_unique = counter.count(enc.dictionary.to_pylist())
    return per_unique[enc.indices.to_numpy(zero_copy_only=False)]


def _fit_exactly(fmt, fields, head, lines, counter, texts, n_tokens, keep, unclean, csum, client_of, budget):
    """Recount the `unclean` clients exactly; drop further old lines where the exact count is over budget."""
    offsets = fields.offsets
    todo = np.flatnonzero(unclean)
    for _ in range(50):
        if not len(todo):
            break
        exact = counter.count(texts.take(pa.array(todo)).to_pylist())
        n_tokens = n_tokens.copy()
        n_tokens[todo] = exact
        over = todo[exact > budget]
        if not len(over):
            break
        # first kept line of each over-budget client, then skip lines worth the excess (at least one)
        kept_idx = np.flatnonzero(keep)
        first = np.full(len(offsets) - 1, len(keep))
        np.minimum.at(first, client_of[kept_idx], kept_idx)
        start = first[over]
        excess = n_tokens[over] - budget
        new_start = np.searchsorted(csum, csum[start] + excess, side="left")
        new_start = np.minimum(np.maximum(new_start, start + 1), offsets[over + 1])
        for c, s in zip(over, new_start):
            keep[offsets[c] : s] = False
        texts = assemble(fmt, fields, head, lines, keep)
        todo = over
    return texts, n_tokens, keep


TEXT_COLUMNS = ["client_id", "text", "n_events", "n_events_kept", "n_tokens"]  # text/{split}.jsonl's columns


def render_chunk(
    events: pd.DataFrame,
    fmt: Format,
    ctx: RenderContext,
    counter: TokenCounter,
    budget: int | None,
    splits: pd.Series | None = None,
    ratio: float | None = None,
    line_cap: int | None = None,
) -> pd.DataFrame:
    """The text rows of one chunk of WHOLE clients (every event of each client of `events`, sorted by
    client_id, event_time), exactly as for the whole table.

    events: columns client_id (str), event_time (datetime64), amount, mcc and ctx.categorical (strings as
        object or pd.ArrowDtype(pa.string()));
    fmt: llm4trx.render.formats.get_format(cfg.text.format); ctx: the dataset's RenderContext (computed over
        ALL events: RenderContext.from_events, or ContextAccumulator over batches);
    counter: llm4trx.render.tokencount.get_counter(cfg.text.count_tokenizer);
    budget: tokens of the text itself = text.max_tokens - SPECIAL_TOKENS (None: no truncation);
    splits: client_id -> split (a Series indexed by client_id); adds a `split` column (NaN where unknown);
    ratio: estimate_ratio(...) of a first chunk, the same for every chunk (None: estimated on this chunk);
    line_cap: estimate_line_cap(...) of a first chunk (None: every line rendered). Neither changes the rows.
    Returns client_id, text, n_events, n_events_kept, n_tokens, n_header_tokens[, split], one row per client
    in client order; the first five columns are text/{split}.jsonl's rows.
    """
    if len(events) and events["client_id"].dtype != object:
        events = events.assign(client_id=events["client_id"].astype(str))
    frame = build_texts(events, fmt, ctx, counter, budget, ratio=ratio, line_cap=line_cap)
    if splits is not None:
        frame["split"] = splits.reindex(frame["client_id"]).to_numpy()
    return frame


class TextStats:
    """stats.json's per-split figures accumulated over chunks (four small integer arrays per split)."""

    COLUMNS = ("n_tokens", "n_events", "n_events_kept", "n_header_tokens")

    def __init__(self):
        self.parts: list[pd.DataFrame] = []

    def add(self, frame: pd.DataFrame) -> None:
        self.parts.append(frame[list(self.COLUMNS)].copy())

    def result(self) -> dict:
        frame = (
            pd.concat(self.parts, ignore_index=True)
            if self.parts
            else pd.DataFrame({c: np.zeros(0, np.int64) for c in self.COLUMNS})
        )
        return token_stats(frame)


def token_stats(frame: pd.DataFrame) -> dict:
    tokens = frame["n_tokens"].to_numpy()
    kept = int(frame["n_events_kept"].sum())
    line_tokens = int((frame["n_tokens"] - frame["n_header_tokens"]).sum())
    pct = {f"p{p}": float(np.percentile(tokens, p)) if len(tokens) else 0.0 for p in PERCENTILES}
    return {
        "n_clients": int(len(frame)),
        "n_events": int(frame["n_events"].sum()),
        "n_events_kept": kept,
        "n_truncated_clients": int((frame["n_events_kept"] < frame["n_events"]).sum()),
        "tokens": {
            **pct,
            "max": int(tokens.max()) if len(tokens) else 0,
            "mean": float(tokens.mean()) if len(tokens) else 0.0,
            "total": int(tokens.sum()),
        },
        "tokens_per_transaction": float(tokens.sum() / kept) if kept else 0.0,
        "line_tokens_per_transaction": float(line_tokens / kept) if kept else 0.0,
    }
