"""How a client's transactions appear inside an augmentation prompt: the text stage's formats (llm4trx.formats)."""

from __future__ import annotations

from typing import Callable

import pandas as pd
from omegaconf import DictConfig


def transaction_renderer(cfg: DictConfig) -> Callable[[pd.DataFrame], str]:
    """events of one client (canonical columns, oldest first) -> text, in format augment.transactions_format."""
    try:
        from llm4trx import formats  # noqa: F401  (the text stage's registry; not on this branch yet)
    except ImportError:
        formats = None
    columns = ["event_time", "amount", "mcc", *cfg.dataset.categorical]

    def render_csv(events: pd.DataFrame) -> str:
        # Until llm4trx.formats is merged: the canonical columns as CSV.
        return events[[c for c in columns if c in events]].to_csv(index=False, date_format="%Y-%m-%d %H:%M")

    return render_csv
