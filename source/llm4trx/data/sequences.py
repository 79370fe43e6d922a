"""data/events.parquet as pytorch-lifestream records (one dict of feature tensors per client), for the
baselines that ptls computes: aggregate features and CoLES."""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger(__name__)


def ptls_records(events: pd.DataFrame, categorical: list[str], numeric: list[str], fit_ids) -> tuple[list[dict], dict]:
    """Records sorted by client id, and the dictionary size of each categorical column. Category codes are
    fitted (frequency encoding, 0 = padding) on the clients `fit_ids` only; other values share one code."""
    from ptls.preprocessing import PandasDataPreprocessor

    columns = ["client_id", "event_time", *categorical, *numeric]
    frame = events[columns]
    preprocessor = PandasDataPreprocessor(
        col_id="client_id",
        col_event_time="event_time",
        event_time_transformation="dt_to_timestamp",
        cols_category=list(categorical),
        category_transformation="frequency",
        cols_numerical=list(numeric),
        return_records=True,
    )
    preprocessor.fit(frame[frame["client_id"].isin(set(fit_ids))])
    records = preprocessor.transform(frame)
    records.sort(key=lambda r: r["client_id"])
    return records, preprocessor.get_category_dictionary_sizes()


def categorical_columns(configured, dataset_categorical) -> list[str]:
    """The categorical columns a baseline uses: `configured`, or (null) mcc plus the dataset's own."""
    return list(configured) if configured is not None else ["mcc", *dataset_categorical]
