"""data/events.parquet as pytorch-lifestream records (one dict of feature tensors per client), for the
baselines that ptls computes: aggregate features and CoLES.

Time features (CoLES's `coles.time_features`): categorical columns derived from event_time before encoding, so
they pass through the same frequency encoding as the dataset's categoricals (as ptls-experiments encodes
age_pred's `trans_date`, a day index, with its categorical encoder):
- day_gap: days since the client's previous transaction, in log-width bins (0 for the first, then
  <1 day, 1, 2, 3-4, 5-8, 9-16, 17-32, 33+ days);
- hour: the hour of day (0-23); weekday: the day of week (0 = Monday);
- day_index: whole days since `time_origin` (dataset.time_origin when set, else the data's first day): the
  counterpart of age_pred's and gender's anonymized day index.
`coles.time_numeric` names the same features as numeric inputs instead (no binning, order kept): day_gap and
day_index in fractional days, hour as hour + minutes/60, weekday 0-6.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from llm4trx.core.errors import ConfigError

log = logging.getLogger(__name__)

TIME_FEATURES = ("day_gap", "hour", "weekday", "day_index")
# day_gap bin edges in days: bin k holds gaps in [edge[k-1], edge[k]); doubling widths beyond two days.
DAY_GAP_EDGES = np.array([1, 2, 3, 5, 9, 17, 33], dtype=np.float64)


def _times(events: pd.DataFrame) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """(event times, days since the client's previous event, whether an event is its client's first) of
    `events`. The feature names are checked at compose time (core/schema.py)."""
    time = pd.to_datetime(events["event_time"])
    gap_days = time.diff().dt.total_seconds().to_numpy() / 86400.0
    first = (events["client_id"] != events["client_id"].shift()).to_numpy()
    return time, gap_days, first


def time_feature_columns(events: pd.DataFrame, features, time_origin=None) -> pd.DataFrame:
    """The time features named in `features` (see TIME_FEATURES) of `events` (sorted by client, time), one
    integer column each, same index."""
    time, gap_days, first = _times(events)
    out = pd.DataFrame(index=events.index)
    if "day_gap" in features:
        codes = np.searchsorted(DAY_GAP_EDGES, np.nan_to_num(gap_days, nan=0.0), side="right") + 1
        out["day_gap"] = np.where(first, 0, codes).astype(np.int64)
    if "hour" in features:
        out["hour"] = time.dt.hour.to_numpy(np.int64)
    if "weekday" in features:
        out["weekday"] = time.dt.weekday.to_numpy(np.int64)
    if "day_index" in features:
        origin = pd.Timestamp(time_origin) if time_origin else time.min().normalize()
        out["day_index"] = ((time - origin).dt.total_seconds() // 86400).to_numpy(np.int64)
    return out[[f for f in features]]


def numeric_time_columns(events: pd.DataFrame, features, time_origin=None) -> pd.DataFrame:
    """The time features named in `features` as float columns (see the module docstring)."""
    time, gap_days, first = _times(events)
    out = pd.DataFrame(index=events.index)
    if "day_gap" in features:
        out["day_gap"] = np.where(first, 0.0, np.nan_to_num(gap_days, nan=0.0))
    if "hour" in features:
        out["hour"] = time.dt.hour.to_numpy(np.float64) + time.dt.minute.to_numpy(np.float64) / 60
    if "weekday" in features:
        out["weekday"] = time.dt.weekday.to_numpy(np.float64)
    if "day_index" in features:
        origin = pd.Timestamp(time_origin) if time_origin else time.min().normalize()
        out["day_index"] = (time - origin).dt.total_seconds().to_numpy() / 86400.0
    return out[[f for f in features]]


def ptls_records(
    events: pd.DataFrame,
    categorical: list[str],
    numeric: list[str],
    fit_ids,
    time_features=(),
    time_origin=None,
    time_numeric=(),
) -> tuple[list[dict], dict]:
    """Records sorted by client id, and the dictionary size of each categorical column. Category codes are
    fitted (frequency encoding, 0 = padding) on the clients `fit_ids` only; other values share one code.
    `time_features` (TIME_FEATURES) are added as categorical columns of the same name, `time_numeric` as
    numeric ones."""
    from ptls.preprocessing import PandasDataPreprocessor

    time_features, time_numeric = list(time_features), list(time_numeric)
    clash = [f for f in time_features if f in categorical or f in numeric or f in time_numeric]
    if clash:
        raise ConfigError(
            f"coles.time_features: {clash} is also a data column of the baseline or in coles.time_numeric"
        )
    clash = [f for f in time_numeric if f in categorical or f in numeric]
    if clash:
        raise ConfigError(f"coles.time_numeric: {clash} is also a data column of the baseline")
    frame = events[["client_id", "event_time", *categorical, *numeric]]
    if time_features:
        frame = pd.concat([frame, time_feature_columns(events, time_features, time_origin)], axis=1)
    if time_numeric:
        frame = pd.concat([frame, numeric_time_columns(events, time_numeric, time_origin)], axis=1)
    categorical = [*categorical, *time_features]
    numeric = [*numeric, *time_numeric]
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
