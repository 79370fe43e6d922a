"""The synthetic generator's events written in each schema's raw CSV layout (rosbank train.csv, age_pred
transactions_train.csv + train_target.csv, gender transactions.csv + gender_train.csv), byte for byte what the
real datasets look like; llm4trx.data.synthetic generates the events and calls WRITERS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from llm4trx.data.synthetic import CASH, CATALOG, END, TRANSFER, YEAR_DAYS


def text_column(*parts) -> pa.Array:
    """Fixed-width strings assembled from parts: (int array, width) zero-padded, or a literal str, or an
    (n, k) uint8 matrix of characters. Why not strftime: pyarrow's took ~5 s per million rows."""
    n = next(len(p[0]) if isinstance(p, tuple) else len(p) for p in parts if not isinstance(p, str))
    columns = []
    for part in parts:
        if isinstance(part, str):
            columns.append(np.broadcast_to(np.frombuffer(part.encode(), dtype=np.uint8), (n, len(part))))
        elif isinstance(part, tuple):
            values, width = part
            columns.append(
                np.stack([(values // 10**k % 10 + 48).astype(np.uint8) for k in range(width - 1, -1, -1)], axis=1)
            )
        else:
            columns.append(part)
    mat = np.ascontiguousarray(np.hstack(columns))
    return pa.array(mat.view(f"S{mat.shape[1]}").ravel()).cast(pa.string())


MONTH_CHARS = np.frombuffer("JANFEBMARAPRMAYJUNJULAUGSEPOCTNOVDEC".encode(), dtype=np.uint8).reshape(12, 3)


def clock_parts(seconds: np.ndarray) -> list:
    rest = seconds % 86400
    return [(rest // 3600, 2), ":", (rest // 60 % 60, 2), ":", (rest % 60, 2)]


def pick(names, index) -> pa.Array:
    """names[index] as an Arrow string array (vectorised take)."""
    return pa.array(list(names), pa.string()).take(pa.array(np.asarray(index)))


def write_csv(table: pa.Table | dict, path: Path, rows: np.ndarray | None = None) -> None:
    table = table if isinstance(table, pa.Table) else pa.table(table)
    if rows is not None:
        table = table.filter(pa.array(rows))
    pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(quoting_style="needed"))


def write_rosbank(events, clients, rng, out: Path) -> None:
    client, seconds = events["client"].to_numpy(), events["seconds"].to_numpy()
    stamp = np.datetime64(END["rosbank"], "s") - np.timedelta64(YEAR_DAYS, "D") + seconds.astype("timedelta64[s]")
    day, month = stamp.astype("datetime64[D]"), stamp.astype("datetime64[M]")
    trdatetime = text_column(
        ((day - month.astype("datetime64[D]")).astype(np.int64) + 1, 2),
        MONTH_CHARS[month.astype(np.int64) % 12],
        ((stamp.astype("datetime64[Y]").astype(np.int64) + 1970) % 100, 2),
        ":",
        *clock_parts(seconds),
    )
    mcc = CATALOG[events["mcc"].to_numpy()]
    channel = rng.choice(6, len(clients), p=[0.5, 0.15, 0.1, 0.05, 0.05, 0.15])[client]
    currency = np.where(rng.random(len(events)) < 0.96, 810, rng.choice([978, 840], len(events)))
    category = np.where(mcc == CASH, 0, np.where(mcc == TRANSFER, 1, 2))
    label = clients["label"].to_numpy()[client]
    amount = events["amount"].to_numpy()
    table = pa.table(
        {
            "cl_id": clients["id"].to_numpy()[client],
            "TRDATETIME": trdatetime,
            "amount": amount,
            "MCC": mcc,
            "channel_type": pick(["type1", "type2", "type3", "type4", "type5", ""], channel),
            "currency": currency,
            "trx_category": pick(["WD_ATM_ROS", "C2C_OUT", "POS"], category),
            "target_flag": label,
            "target_sum": np.round(label * amount * 3, 2),
        }
    )
    labeled = clients["labeled"].to_numpy()[client]
    write_csv(table, out / "train.csv", labeled)
    if not labeled.all():
        write_csv(table.select(table.column_names[:7]), out / "test.csv", ~labeled)


def write_age_pred(events, clients, rng, out: Path) -> None:
    client = events["client"].to_numpy()
    table = {
        "client_id": clients["id"].to_numpy()[client],
        "trans_date": events["seconds"].to_numpy() // 86400,
        "small_group": events["mcc"].to_numpy(),
        "amount_rur": events["amount"].to_numpy(),
    }
    labeled = clients["labeled"].to_numpy()[client]
    write_csv(table, out / "transactions_train.csv", labeled)
    if not labeled.all():
        write_csv(table, out / "transactions_test.csv", ~labeled)
    targets = clients[clients["labeled"]].sort_values("id")
    write_csv({"client_id": targets["id"].to_numpy(), "bins": targets["label"].to_numpy()}, out / "train_target.csv")


def write_gender(events, clients, rng, out: Path) -> None:
    client, seconds = events["client"].to_numpy(), events["seconds"].to_numpy()
    when = pc.binary_join_element_wise(
        pc.cast(pa.array(seconds // 86400), pa.string()), text_column(*clock_parts(seconds)), " "
    )
    mcc = CATALOG[events["mcc"].to_numpy()]
    tr_type = np.where(mcc == CASH, 2010, np.where(mcc == TRANSFER, 7070, 1010))
    has_term = rng.random(len(events)) < 0.3
    term = pc.if_else(pa.array(has_term), pc.cast(pa.array(rng.integers(100000, 999999, len(events))), pa.string()), "")
    write_csv(
        {
            "customer_id": clients["id"].to_numpy()[client],
            "tr_datetime": when,
            "mcc_code": mcc,
            "tr_type": tr_type,
            "amount": -events["amount"].to_numpy(),
            "term_id": term,
        },
        out / "transactions.csv",
    )
    targets = clients[clients["labeled"]].sort_values("id")
    write_csv(
        {"customer_id": targets["id"].to_numpy(), "gender": targets["label"].to_numpy()}, out / "gender_train.csv"
    )


WRITERS = {"rosbank": write_rosbank, "age_pred": write_age_pred, "gender": write_gender}


def write_factors(clients: pd.DataFrame, schema: str, path: Path) -> None:
    """The hidden factors per client (the `oracle` feature set of llm4trx.validate): a file of its own next
    to the raw files, never a column of them, keyed by the schema's client-id column."""
    id_column = {"rosbank": "cl_id", "age_pred": "client_id", "gender": "customer_id"}[schema]
    frame = clients.sort_values("id")
    factors = [c for c in frame.columns if c.startswith("z_")]  # the base four, then the opt-in kinds switched on
    write_csv({id_column: frame["id"].to_numpy(), **{c: frame[c].to_numpy() for c in factors}}, path)
