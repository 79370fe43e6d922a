"""How a client's transactions appear inside an augmentation prompt: the text stage's formats (llm4trx.render.formats)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from llm4trx.core.sections import DatasetSpec, TextSpec
from llm4trx.data.chunks import read_events

Renderer = Callable[[pd.DataFrame], str]


def check_format(transactions_format: str) -> None:
    """ConfigError listing the known formats when augment.transactions_format is not one (before any work)."""
    from llm4trx.render.formats import get_format

    get_format(transactions_format)


def transaction_renderer(transactions_format: str, ds: DatasetSpec, text: TextSpec, data_dir: Path) -> Renderer:
    """events of one client (canonical columns, oldest first) -> text in `transactions_format` (augment's), with
    the dataset's columns and the text section's options as the text stage renders them.

    The render context (MCC names, time resolution, usual categorical values) is computed from ALL events, as
    the text stage does, so that a client's transactions read the same here as in its text/ record.
    """
    from llm4trx.render.columns import RenderContext
    from llm4trx.render.formats import get_format, render_client

    fmt = get_format(transactions_format)
    categorical = list(ds.categorical or [])
    everything = read_events(data_dir, ["event_time", *categorical])
    ctx = RenderContext.from_events(everything, ds, text)

    def render(events: pd.DataFrame) -> str:
        return render_client(events, fmt, ctx) if len(events) else ""

    return render
