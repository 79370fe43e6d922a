"""Stage `prepare` end to end, and every kind of bad input (an error naming file/column/row, or a counted repair)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from llm4trx.core.config import compose
from llm4trx.core.errors import DataError
from llm4trx.prepare import run
from llm4trx.core.stage import LOCK_DIR, read_success, stage_dir

ROSBANK_HEADER = "cl_id,TRDATETIME,amount,MCC,channel_type,currency,trx_category,target_flag,target_sum"


def outputs_left(root):
    """Files and folders under `root` other than the build locks of shared stages (empty lock files that stay)."""
    return [p for p in root.rglob("*.*") if LOCK_DIR not in p.parts]


def test_synthetic_default_writes_the_contract_files_and_skips_reruns(out_root):
    cfg = compose([f"paths.output_root={out_root}", "dataset.n_clients=200", "dataset.max_events=40"])
    folder = run(cfg)
    assert folder == stage_dir(cfg, "prepare")
    events = pq.read_table(folder / "events.parquet")
    assert [(f.name, str(f.type)) for f in events.schema] == [
        ("client_id", "string"),
        ("event_time", "timestamp[ns]"),
        ("amount", "double"),
        ("mcc", "int32"),
        ("channel_type", "string"),
        ("currency", "string"),
        ("trx_category", "string"),
    ]
    targets, splits = pd.read_parquet(folder / "targets.parquet"), pd.read_parquet(folder / "splits.parquet")
    assert str(pq.read_schema(folder / "splits.parquet")).startswith(
        "client_id: string\nsplit: string\nfold: int8\nlabeled: bool"
    )
    assert targets["target"].dtype == "int64"
    assert set(splits["client_id"]) == set(events.column("client_id").to_pylist())
    assert set(targets["client_id"]) == set(splits.loc[splits["labeled"], "client_id"])
    assert set(splits["split"]) == {"train", "val", "test"}
    assert splits.loc[splits["split"] == "test", "labeled"].all()
    counts = read_success(folder)["counts"]
    assert counts["events"] == events.num_rows and counts["clients"] == 200
    stamp = (folder / "events.parquet").stat().st_mtime_ns
    run(cfg)
    assert (folder / "events.parquet").stat().st_mtime_ns == stamp


def test_real_sample_runs_from_any_working_directory(out_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = run(compose([f"paths.output_root={out_root}", "dataset=age_pred_sample"]))
    splits = pd.read_parquet(folder / "splits.parquet")
    assert len(splits) == 100 and (splits["split"] == "test").sum() == 10 and splits["labeled"].all()


def rosbank_lines(n_clients=20, rows=3):
    lines = [ROSBANK_HEADER]
    for c in range(n_clients):
        lines += [f"{c},{10 + k:02d}OCT17:00:00:00,{100.5 + k},5411,type1,810,POS,{c % 2},0" for k in range(rows)]
    return lines


def prepare_rosbank(tmp_path, lines, *overrides, raw: bytes | None = None):
    raw_dir = tmp_path / "rosbank"
    raw_dir.mkdir(exist_ok=True)
    (raw_dir / "train.csv").write_bytes(raw if raw is not None else ("\n".join(lines) + "\n").encode())
    cfg = compose(
        [f"paths.output_root={tmp_path / 'out'}", "dataset=rosbank", f"dataset.raw_dir={raw_dir}", *overrides]
    )
    return cfg, raw_dir / "train.csv"


def edit(lines, line_no, column, value):
    """Set `column` of 1-based file line `line_no` to `value`."""
    out = list(lines)
    cells = out[line_no - 1].split(",")
    cells[ROSBANK_HEADER.split(",").index(column)] = value
    out[line_no - 1] = ",".join(cells)
    return out


ERRORS = {
    "unparsable date": (lambda ls: edit(ls, 5, "TRDATETIME", "2017-10-12"), "TRDATETIME", 5, "cannot parse date"),
    "impossible date": (lambda ls: edit(ls, 6, "TRDATETIME", "31FEB17:00:00:00"), "TRDATETIME", 6, "cannot parse date"),
    "empty amount": (lambda ls: edit(ls, 4, "amount", ""), "amount", 4, "missing or NaN"),
    "NaN amount": (lambda ls: edit(ls, 7, "amount", "NaN"), "amount", 7, "missing or NaN"),
    "inf amount": (lambda ls: edit(ls, 3, "amount", "inf"), "amount", 3, "infinite"),
    "text amount": (lambda ls: edit(ls, 8, "amount", "12,5x".replace(",", "")), "amount", 8, "not a number"),
    "non-integer MCC": (lambda ls: edit(ls, 9, "MCC", "54x1"), "MCC", 9, "not an integer"),
    "negative MCC": (lambda ls: edit(ls, 9, "MCC", "-5"), "MCC", 9, "out of range"),
    "missing client id": (lambda ls: edit(ls, 10, "cl_id", ""), "cl_id", 10, "missing value"),
    "client with two targets": (lambda ls: edit(ls, 3, "target_flag", "1"), "target_flag", 3, "different target"),
    "misspelled column": (lambda ls: [ls[0].replace(",MCC,", ",MCCC,")] + ls[1:], "MCC", None, "did you mean 'MCCC'"),
    "header only": (lambda ls: ls[:1], None, None, "no data rows"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_bad_rosbank_input_is_an_error_naming_file_column_row_and_writes_nothing(tmp_path, case):
    mutate, column, row, message = ERRORS[case]
    cfg, path = prepare_rosbank(tmp_path, mutate(rosbank_lines()))
    with pytest.raises(DataError, match=message) as err:
        run(cfg)
    assert err.value.path == str(path) and err.value.column == column and err.value.row == row
    assert str(path) in str(err.value)
    assert not stage_dir(cfg, "prepare").exists()
    assert not outputs_left(tmp_path / "out")  # no files, no temporary folders left behind


def test_missing_and_empty_files_and_non_utf8_bytes(tmp_path):
    cfg = compose([f"paths.output_root={tmp_path / 'out'}", "dataset=rosbank", f"dataset.raw_dir={tmp_path}"])
    (tmp_path / "tain.csv").write_text("x\n")
    with pytest.raises(DataError, match=r"train\.csv: file not found \(did you mean 'tain\.csv'\?\)"):
        run(cfg)
    cfg, path = prepare_rosbank(tmp_path, [], raw=b"")
    with pytest.raises(DataError, match="file is empty"):
        run(cfg)
    lines = rosbank_lines()
    raw = ("\n".join(lines[:5]) + "\n").encode() + lines[5].replace("type1", "typ\xe9").encode("latin-1") + b"\n"
    cfg, path = prepare_rosbank(tmp_path, [], raw=raw + ("\n".join(lines[6:]) + "\n").encode())
    with pytest.raises(DataError, match="not valid UTF-8") as err:
        run(cfg)
    assert err.value.row == 6 and err.value.path == str(path)
    assert not stage_dir(cfg, "prepare").exists() and not outputs_left(tmp_path / "out")


def test_duplicate_events_are_counted_and_kept_or_dropped(tmp_path):
    lines = rosbank_lines()
    lines.insert(5, lines[4])
    folder = run(prepare_rosbank(tmp_path, lines)[0])
    assert read_success(folder)["counts"]["repairs"]["duplicate_events"] == 1
    assert pq.read_metadata(folder / "events.parquet").num_rows == 61
    folder = run(prepare_rosbank(tmp_path, lines, "dataset.drop_duplicates=true")[0])
    assert pq.read_metadata(folder / "events.parquet").num_rows == 60


def test_unknown_mcc_and_missing_categories_are_counted_repairs(tmp_path):
    lines = edit(edit(rosbank_lines(), 2, "MCC", "1"), 3, "channel_type", "")
    folder = run(prepare_rosbank(tmp_path, lines)[0])
    assert read_success(folder)["counts"]["repairs"] == {"mcc_not_iso18245": 1, "categorical_filled": 1}
    events = pd.read_parquet(folder / "events.parquet")
    assert (events["mcc"] == 1).sum() == 1 and (events["channel_type"] == "unknown").sum() == 1


def age_pred_files(tmp_path, target_lines):
    raw = tmp_path / "age"
    raw.mkdir(exist_ok=True)
    tx = ["client_id,trans_date,small_group,amount_rur"] + [
        f"{c},{d},{c % 7},{10 + d}.5" for c in range(20) for d in range(3)
    ]
    (raw / "transactions_train.csv").write_text("\n".join(tx) + "\n")
    (raw / "train_target.csv").write_text("\n".join(["client_id,bins"] + target_lines) + "\n")
    return compose(
        [f"paths.output_root={tmp_path / 'out'}", "dataset=age_pred", f"dataset.raw_dir={raw}", "splits.n_folds=2"]
    ), raw / "train_target.csv"


def test_target_ids_without_transactions_and_duplicate_targets_are_repairs(tmp_path):
    targets = [f"{c},{c % 4}" for c in range(20)] + ["999,1", "5,1"]  # 999: no transactions; 5: duplicate
    folder = run(age_pred_files(tmp_path, targets)[0])
    repairs = read_success(folder)["counts"]["repairs"]
    assert repairs == {"targets_without_events": 1, "duplicate_targets": 1}
    got = pd.read_parquet(folder / "targets.parquet")
    assert len(got) == 20 and "999" not in set(got["client_id"])
    assert "999" not in set(pd.read_parquet(folder / "splits.parquet")["client_id"])


@pytest.mark.parametrize(
    "bad, row, message",
    [
        (["5,3"], 22, "different targets"),
        (["7,x"], 22, "not an integer"),
        (["7,"], 22, "missing value"),
    ],
)
def test_bad_target_rows_are_errors(tmp_path, bad, row, message):
    cfg, path = age_pred_files(tmp_path, [f"{c},{c % 4}" for c in range(20)] + bad)
    with pytest.raises(DataError, match=message) as err:
        run(cfg)
    assert err.value.path == str(path) and err.value.row == row


def test_target_outside_the_classes_is_an_error(tmp_path):
    cfg, path = age_pred_files(tmp_path, [f"{c},{c % 4}" for c in range(19)] + ["19,7"])
    with pytest.raises(DataError, match=r"target 7 of client '19' is outside \[0, 4\)"):
        run(cfg)


def test_gender_time_that_is_not_day_and_clock_is_an_error(tmp_path):
    raw = tmp_path / "gender"
    raw.mkdir()
    tx = [
        "customer_id,tr_datetime,mcc_code,tr_type,amount,term_id",
        "1,0 10:23:26,5411,1010,-5.0,",
        "1,3 25:61,5411,1010,-5.0,",
    ]
    (raw / "transactions.csv").write_text("\n".join(tx) + "\n")
    (raw / "gender_train.csv").write_text("customer_id,gender\n1,0\n")
    with pytest.raises(DataError, match="DAY HH:MM:SS") as err:
        run(compose([f"paths.output_root={tmp_path / 'out'}", "dataset=gender", f"dataset.raw_dir={raw}"]))
    assert err.value.column == "tr_datetime" and err.value.row == 3
