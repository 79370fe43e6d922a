"""Stage `prepare` streamed in blocks: the same bytes and the same errors as one block, and memory that grows
by a few tens of bytes per transaction (the raw text is never held).

`dataset.block_bytes` (optional key, default 64 MiB: rawcsv.BLOCK_BYTES) sets the CSV bytes per block; a few
kB give hundreds of blocks on a small file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from llm4trx.core.config import compose
from llm4trx.core.errors import DataError
from llm4trx.core.sections import DatasetSpec
from llm4trx.core.stage import read_success
from llm4trx.data import event_store, loaders, rawcsv
from llm4trx.prepare import run

ROOT = Path(__file__).resolve().parents[1]
ROSBANK_HEADER = "cl_id,TRDATETIME,amount,MCC,channel_type,currency,trx_category,target_flag,target_sum"
SCHEMAS = {
    "rosbank": ["dataset.n_clients=150"],  # per-row targets, two files, empty categoricals filled
    "age_pred": ["dataset.schema=age_pred", "dataset.n_clients=150"],  # day indices, a targets file
    "gender_dedup": ["dataset.schema=gender", "dataset.n_clients=150", "dataset.drop_duplicates=true"],
}


def digests(folder: Path) -> dict:
    out = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.parquet"))}
    counts = read_success(folder)["counts"]
    counts.pop("load_seconds")
    return {**out, "counts": counts}


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_many_blocks_write_the_same_bytes_as_one(tmp_path, schema):
    whole = run(compose([f"paths.output_root={tmp_path / 'one'}", *SCHEMAS[schema]]))
    blocks = run(compose([f"paths.output_root={tmp_path / 'many'}", *SCHEMAS[schema], "+dataset.block_bytes=4096"]))
    biggest = max((tmp_path / "many" / "raw").glob("*/*.csv"), key=lambda p: p.stat().st_size)
    assert biggest.stat().st_size > 10 * 4096  # many blocks indeed
    assert digests(blocks) == digests(whole)


def write_rosbank(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("\n".join([ROSBANK_HEADER, *rows]) + "\n")
    return folder


def good_rows(n: int) -> list[str]:
    return [
        f"{i % 37},{1 + i % 28:02d}OCT17:{i % 24:02d}:00:00,{10 + i % 50}.5,5411,POS,810,POS,{(i % 37) % 2},0"
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "line, bad, column, message",
    [
        (1500, "7,01OCT17:00:00:00,abc,5411,POS,810,POS,1,0", "amount", "value 'abc' is not a number"),
        (1500, "7,01OCT17:00:00:00,,5411,POS,810,POS,1,0", "amount", "missing or NaN"),
        (1500, "7,31FEB17:00:00:00,1.0,5411,POS,810,POS,1,0", "TRDATETIME", "cannot parse date"),
        (1500, "7,01OCT17:00:00:00,1.0,-4,POS,810,POS,1,0", "MCC", "out of range"),
        (1500, " ,01OCT17:00:00:00,1.0,5411,POS,810,POS,1,0", "cl_id", "missing value"),
        (
            1500,
            "7,01OCT17:00:00:00,1.0,5411,POS,810,POS,0,0",
            "target_flag",
            "different target than in its first row (line 9)",
        ),
    ],
)
def test_an_error_in_a_later_block_names_the_same_file_column_and_line(tmp_path, line, bad, column, message):
    rows = good_rows(2000)
    rows[line - 2] = bad  # line 1 is the header
    raw = write_rosbank(tmp_path / "raw", rows)
    errors = []
    for block_bytes in (rawcsv.BLOCK_BYTES, 2048):
        ds = DatasetSpec.from_config(
            compose(["dataset=rosbank", f"dataset.raw_dir={raw}", f"+dataset.block_bytes={block_bytes}"]).dataset
        )
        with pytest.raises(DataError) as err:
            loaders.load(ds)
        errors.append(str(err.value))
        assert (err.value.column, err.value.row) == (column, line) and message in err.value.message
        assert err.value.path == str(raw / "train.csv")
    assert errors[0] == errors[1]


@pytest.mark.parametrize("header", ['"client_id","amount"', ',client_id","amount"', " client_id,amount"])
def test_a_header_is_read_as_pyarrow_reads_it(tmp_path, header):
    # The fuzz's find: a quoted header whose first quote became a comma (`,client_id","amount"`) named a column
    # pyarrow reads as `client_id"`; the check must see the same names, so the error is one DataError line.
    path = tmp_path / "t.csv"
    path.write_bytes(f"{header}\n1,2.5\n".encode())
    types = {"client_id": pa.string(), "amount": pa.float64()}
    if header.startswith('"'):
        assert rawcsv.read_csv(path, types).column("client_id").to_pylist() == ["1"]
        assert [t.num_rows for _, t in rawcsv.CsvBlocks(path, types)] == [1]
        return
    for read in (lambda: rawcsv.read_csv(path, types), lambda: list(rawcsv.CsvBlocks(path, types))):
        with pytest.raises(DataError) as err:
            read()
        assert err.value.column == "client_id" and "missing column" in err.value.message


def test_utf8_checked_in_chunks_reports_the_same_line_and_offset(tmp_path):
    path = tmp_path / "train.csv"
    data = ("\n".join([ROSBANK_HEADER, *good_rows(300)]) + "\n").encode()
    at = data.index(b"\n", len(data) // 2) + 3
    path.write_bytes(data[:at] + b"\xff" + data[at:])
    with pytest.raises(DataError) as whole:
        rawcsv.read_bytes(path)
    for step in (7, 64, 4096):
        with pytest.raises(DataError) as chunked:
            rawcsv.check_text(path, step=step)
        assert str(chunked.value) == str(whole.value)
    path.write_bytes(data)
    header, max_rows = rawcsv.check_text(path, step=100)
    assert header == ROSBANK_HEADER.split(",") and max_rows == 300


def test_duplicates_found_in_slices_equal_the_whole_comparison(tmp_path):
    # Exact duplicates, not adjacent inside their (client, time) group (A B A), and groups that cross slices.
    rows = []
    for client in range(6):
        for hour in range(5):
            base = f"{client},05OCT17:{hour:02d}:00:00"
            rows += [
                f"{base},1.0,5411,POS,810,POS,0,0",
                f"{base},2.0,5411,POS,810,POS,0,0",
                f"{base},1.0,5411,POS,810,POS,0,0",
                f"{base},1.0,5812,POS,810,POS,0,0",
            ][: 1 + (client + hour) % 4]
    raw = write_rosbank(tmp_path / "raw", rows)
    ds = DatasetSpec.from_config(compose(["dataset=rosbank", f"dataset.raw_dir={raw}"]).dataset)
    loaded = loaders.load(ds)
    store = loaded.store
    whole = loaded.events.duplicated().to_numpy()  # pandas on the full sorted frame: the definition
    assert whole.sum() > 0 and loaded.repairs["duplicate_events"] == whole.sum()
    for step in (1, 2, 3, 5, 8, 13, 1000):
        assert np.array_equal(event_store.duplicated_rows(store, step=step), whole), step


def test_sorting_in_slices_equals_pandas_stable_sort(tmp_path):
    raw = write_rosbank(tmp_path / "raw", good_rows(3000))
    store = loaders.load(DatasetSpec.from_config(compose(["dataset=rosbank", f"dataset.raw_dir={raw}"]).dataset)).store
    ids = np.array(store.dicts["client_id"].values, dtype=object)[store.columns["client_id"]]
    file_order = pd.DataFrame({"k": ids.astype(str), "t": store.columns["event_time"]})
    expected = file_order.sort_values(["k", "t"], kind="stable").index.to_numpy()
    for step in (7, 1000, 1 << 22):
        assert np.array_equal(event_store.sort_order(store, step=step), expected), step


def peak_rss_of_prepare(out_root: Path, n_clients: int) -> tuple[int, float]:
    """(transactions, peak resident bytes) of `python -m llm4trx.prepare` in a child process. The peak is the
    child's own VmHWM (the rusage of a child also counts the pages of this pytest process at fork)."""
    overrides = [
        f"paths.output_root={out_root}",
        "dataset.schema=age_pred",
        f"dataset.n_clients={n_clients}",
        "dataset.min_events=700",
        "dataset.max_events=1150",
        "progress=false",
        "+dataset.block_bytes=1048576",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "source")}
    gen = [
        sys.executable,
        "-c",
        "import sys; from llm4trx.core.config import compose; from llm4trx.core.sections import DatasetSpec; "
        "from llm4trx.data import synthetic; synthetic.ensure_raw(DatasetSpec.from_config(compose(sys.argv[1:]).dataset))",
        *overrides,
    ]
    subprocess.run(gen, check=True, env=env, cwd=ROOT, capture_output=True)  # generated outside the measurement
    hwm = out_root / "peak.kb"
    # Written at exit by an atexit handler: the stage ends with os._exit after them (core/cli.end_stage_process).
    wrapper = (
        "import atexit, runpy, sys\nout = sys.argv.pop(1)\nsys.argv[0] = 'llm4trx.prepare'\n"
        "atexit.register(lambda: open(out, 'w').write("
        "[l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]))\n"
        "runpy.run_module('llm4trx.prepare', run_name='__main__', alter_sys=True)\n"
    )
    subprocess.run(
        [sys.executable, "-c", wrapper, str(hwm), *overrides], check=True, env=env, cwd=ROOT, capture_output=True
    )
    folder = out_root / "smoke" / "synthetic" / "shared" / "data"
    return read_success(folder)["counts"]["events"], int(hwm.read_text()) * 1024.0


@pytest.mark.slow
def test_memory_grows_by_tens_of_bytes_per_transaction(tmp_path):
    """Peak RSS of prepare at 2x the transactions: the growth per transaction is that of the compact columns
    and the sort (~45 B, plus allocator slack at these sizes: 71 B measured), far below the whole-file path's
    ~190 B (8.79 GB at 46M transactions). Both sizes are past the fixed-size buffers (1 MiB blocks, 256Ki-row
    duplicate slices, 1Mi-row Parquet row groups), which then no longer grow."""
    small = peak_rss_of_prepare(tmp_path / "small", 1200)
    large = peak_rss_of_prepare(tmp_path / "large", 2400)
    per_transaction = (large[1] - small[1]) / (large[0] - small[0])
    assert small[0] > 1 << 20 and large[0] > 1.8 * small[0]
    assert per_transaction < 100, f"{per_transaction:.0f} bytes per transaction (small {small}, large {large})"
