"""engine=spark: prepare and text on Apache Spark give the embedded engine's outputs (events, targets, splits,
texts, stats, _SUCCESS counts), the same errors for bad raw files with nothing left behind, and the same
skip behaviour. One local[2] session for the module (a JVM start costs seconds)."""

from __future__ import annotations

import filecmp
import json
import os
import shutil

import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from llm4trx.core.config import compose
from llm4trx.core.errors import DataError
from llm4trx.core.spark import java_available
from llm4trx.core.stage import read_success, stage_dir
from llm4trx.prepare import run as prepare
from llm4trx.text import run as text

if not java_available():  # CI installs a JRE (scripts/setup.sh): there the tests must run, not skip
    if os.environ.get("CI"):
        raise RuntimeError("engine=spark tests need Java on CI: scripts/setup.sh installs openjdk-17-jre-headless")
    pytest.skip("no Java on this machine (scripts/setup.sh installs a headless JRE)", allow_module_level=True)
pyspark = pytest.importorskip("pyspark")

SPARK = ["engine=spark", "engine.spark.partitions=3", "engine.spark.block_bytes=30000"]
SMALL = ["dataset.n_clients=60", "dataset.min_events=5", "dataset.max_events=40"]


@pytest.fixture(scope="module")
def spark():
    """The product's own session builder (llm4trx.core.spark.session), local[2]; stages reuse the active one."""
    from llm4trx.core.spark import session as build

    session = build(
        compose(
            [
                "engine=spark",
                "engine.spark.master='local[2]'",
                "+engine.spark.conf.spark.sql.shuffle.partitions=4",
                "+engine.spark.conf.spark.default.parallelism=2",
            ]
        )
    )
    assert session.conf.get("spark.sql.shuffle.partitions") == "4"
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def configs(root, *extra):
    """(embedded, spark) configs over the same raw files, in two output roots."""
    raw = f"dataset.raw_dir={root}/raw"
    return (
        compose([f"paths.output_root={root}/embedded", raw, *SMALL, *extra]),
        compose([f"paths.output_root={root}/spark", raw, *SMALL, *SPARK, *extra]),
    )


def assert_same_prepare(a, b):
    for name in ("events", "targets", "splits"):
        pd.testing.assert_frame_equal(pd.read_parquet(a / f"{name}.parquet"), pd.read_parquet(b / f"{name}.parquet"))
    assert pq.read_schema(a / "events.parquet").equals(pq.read_table(b / "events.parquet").schema, check_metadata=True)
    for name in ("targets", "splits"):  # small tables written by the same code: the same bytes
        assert filecmp.cmp(a / f"{name}.parquet", b / f"{name}.parquet", shallow=False)
    ca, cb = read_success(a)["counts"], read_success(b)["counts"]
    ca.pop("load_seconds"), cb.pop("load_seconds")
    assert ca == cb and list(ca["repairs"]) == list(cb["repairs"])  # same counts, repairs in the same order
    assert read_success(a)["config_hash"] == read_success(b)["config_hash"]  # the engine is not hashed


@pytest.fixture(scope="module")
def rosbank(spark, tmp_path_factory):
    """Both engines' prepare on the same rosbank-schema data (shared by the tests below)."""
    root = tmp_path_factory.mktemp("rosbank")
    emb, spk = configs(root, "dataset.schema=rosbank", "text.chunk_events=300", "text.max_tokens=60")  # truncating
    return root, emb, spk, prepare(emb), prepare(spk)


def check_parts(folder):
    parts = sorted((folder / "events.parquet").glob("part-*.parquet"))
    assert len(parts) > 1  # a directory of parts, each holding whole clients, in client order
    firsts = [pq.read_table(p, columns=["client_id"]).column(0) for p in parts]
    for before, after in zip(firsts, firsts[1:]):
        assert before[-1].as_py() < after[0].as_py()


def test_prepare_on_spark_equals_embedded_rosbank(rosbank):
    _, _, _, a, b = rosbank
    assert_same_prepare(a, b)
    check_parts(b)


@pytest.mark.parametrize(
    "extra",
    [["dataset.schema=age_pred"], ["dataset.schema=gender", "dataset.drop_duplicates=true"]],
    ids=["age_pred", "gender_dedup"],
)
def test_prepare_on_spark_equals_embedded(spark, tmp_path, extra):
    emb, spk = configs(tmp_path, *extra)
    a, b = prepare(emb), prepare(spk)
    assert_same_prepare(a, b)
    check_parts(b)


def test_text_on_spark_equals_embedded_and_skips(rosbank):
    root, emb, spk, _, _ = rosbank
    a, b = text(emb), text(spk)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "stats.json"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    assert (
        read_success(b)["counts"]
        and json.loads((b / "stats.json").read_text())["splits"]["train"]["n_truncated_clients"] > 0
    )
    assert sorted(p.name for p in b.iterdir()) == [
        "_SUCCESS.json",
        "stats.json",
        "test.jsonl",
        "train.jsonl",
        "val.jsonl",
    ]
    assert read_success(a)["config_hash"] == read_success(b)["config_hash"]
    # reruns skip, whichever engine asks (the same hash): nothing is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (stage_dir(spk, "prepare") / "events.parquet").iterdir()}
    stamps[b / "train.jsonl"] = (b / "train.jsonl").stat().st_mtime_ns
    embedded_on_spark_root = compose(
        [
            f"paths.output_root={root}/spark",
            f"dataset.raw_dir={root}/raw",
            *SMALL,
            "dataset.schema=rosbank",
            "text.chunk_events=300",
            "text.max_tokens=60",
        ]
    )
    for cfg in (spk, embedded_on_spark_root):
        prepare(cfg), text(cfg)
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_readers_of_events_accept_the_directory(rosbank):
    _, _, _, a, b = rosbank
    a, b = a / "events.parquet", b / "events.parquet"
    assert b.is_dir()
    whole = pd.read_parquet(a)
    pd.testing.assert_frame_equal(pq.read_table(b).to_pandas(), whole)  # text (whole), validate, coles
    some = sorted(whole["client_id"].unique())[::7]
    pd.testing.assert_frame_equal(  # augment reads its clients with a filter
        pd.read_parquet(b, filters=[("client_id", "in", some)]).reset_index(drop=True),
        pd.read_parquet(a, filters=[("client_id", "in", some)]).reset_index(drop=True),
    )
    pd.testing.assert_frame_equal(
        pd.read_parquet(b, columns=["event_time", "currency"]), whole[["event_time", "currency"]]
    )  # generation/transactions.py
    assert pads.dataset(b).count_rows() == len(whole)


@pytest.fixture(scope="module")
def rosbank_raw(rosbank):
    """The rosbank-schema raw files of the shared fixture; tests corrupt copies."""
    return rosbank[0] / "raw"


def corrupt(raw, name, line, column, value):
    """Set `column` of 1-based `line` of raw/name to `value` (bytes); column None: rename the header field."""
    path = raw / name
    lines = path.read_bytes().split(b"\n")
    header = [h.strip(b'"') for h in lines[0].split(b",")]
    if value is None:
        header[header.index(column.encode())] = b"amnt"
        lines[0] = b",".join(header)
    else:
        fields = lines[line - 1].split(b",")
        fields[header.index(column.encode())] = value
        lines[line - 1] = b",".join(fields)
    path.write_bytes(b"\n".join(lines))


@pytest.mark.parametrize(
    "name,column,value",
    [
        ("train.csv", "amount", None),  # missing column (rosbank schema)
        ("train.csv", "amount", b"abc"),  # not a number
        ("train.csv", "TRDATETIME", b"32XYZ17:00:00:00"),  # unparsable time
        ("train.csv", "channel_type", b"type\xff1"),  # not UTF-8
        ("test.csv", "MCC", b"-5"),  # a later file
    ],
)
def test_bad_raw_file_fails_like_embedded_and_leaves_nothing(spark, tmp_path, rosbank_raw, name, column, value):
    emb, spk = configs(tmp_path, "dataset.schema=rosbank")
    shutil.copytree(rosbank_raw, tmp_path / "raw")
    line = 2 + len((tmp_path / "raw" / name).read_bytes().split(b"\n")) * 2 // 3  # in a later byte range
    corrupt(tmp_path / "raw", name, line, column, value)
    with pytest.raises(DataError) as embedded:
        prepare(emb)
    with pytest.raises(DataError) as on_spark:
        prepare(spk)
    assert str(on_spark.value) == str(embedded.value)
    assert on_spark.value.row in (None, line) and (value is None or on_spark.value.row == line)
    leftovers = [p for p in (tmp_path / "spark").rglob("*") if p.is_file() and ".locks" not in p.parts]
    assert leftovers == []


def test_conflicting_row_target_fails_like_embedded(spark, tmp_path, rosbank_raw):
    emb, spk = configs(tmp_path, "dataset.schema=rosbank")
    shutil.copytree(rosbank_raw, tmp_path / "raw")
    path = tmp_path / "raw" / "train.csv"
    lines = path.read_bytes().split(b"\n")
    header = [h.strip(b'"') for h in lines[0].split(b",")]
    at = header.index(b"target_flag")
    client = lines[-3].split(b",")[0]  # a client's LAST row gets the other target
    last = max(i for i, line in enumerate(lines) if line.split(b",")[0] == client)
    fields = lines[last].split(b",")
    fields[at] = b"1" if fields[at] == b"0" else b"0"
    lines[last] = b",".join(fields)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError) as embedded:
        prepare(emb)
    with pytest.raises(DataError) as on_spark:
        prepare(spk)
    assert str(on_spark.value) == str(embedded.value) and on_spark.value.row == last + 1


def test_engine_config_composes_and_passes_spark_keys_through():
    from llm4trx.core.check import compose_checked
    from llm4trx.core.errors import ConfigError
    from llm4trx.core.spark import engine_of, flat_conf
    from omegaconf import OmegaConf

    assert engine_of(compose([])) == "embedded"
    cfg = compose_checked(
        [
            "engine=spark",
            "+engine.spark.conf.spark.executor.memory=2g",
            "+engine.spark.conf.spark.sql.shuffle.partitions=3",
        ]
    )
    assert engine_of(cfg) == "spark"
    conf = flat_conf(OmegaConf.to_container(cfg.engine.spark.conf))
    assert conf["spark.executor.memory"] == "2g" and conf["spark.sql.shuffle.partitions"] == "3"  # the override wins
    assert conf["spark.ui.enabled"] == "false"
    with pytest.raises(ConfigError):
        compose_checked(["engine=bogus"])
    with pytest.raises(ConfigError, match="engine.name='dask': should be 'embedded' or 'spark'"):
        compose_checked(["engine.name=dask"])
    assert engine_of(OmegaConf.create({})) == "embedded"


@pytest.mark.parametrize("drop", ["false", "true"])
def test_duplicates_counted_and_dropped_like_embedded(spark, tmp_path, rosbank_raw, drop):
    """A, B, A' sharing client and time (A' a copy of A, not its neighbour in file order), and an exact copy at
    the end of the file: counted the same, and with drop_duplicates the same rows kept in the same order."""
    emb, spk = configs(tmp_path, "dataset.schema=rosbank", f"dataset.drop_duplicates={drop}")
    shutil.copytree(rosbank_raw, tmp_path / "raw")
    path = tmp_path / "raw" / "train.csv"
    lines = path.read_bytes().rstrip(b"\n").split(b"\n")
    header = [h.strip(b'"') for h in lines[0].split(b",")]
    k = len(lines) // 2
    b = lines[k].split(b",")
    b[header.index(b"amount")] = b"1.25"
    lines[k + 1 : k + 1] = [b",".join(b), lines[k]]
    lines.append(lines[3])
    path.write_bytes(b"\n".join(lines) + b"\n")
    a, b = prepare(emb), prepare(spk)
    assert read_success(a)["counts"]["repairs"]["duplicate_events"] == 2
    assert_same_prepare(a, b)
