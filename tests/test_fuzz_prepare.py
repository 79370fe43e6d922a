"""Property-based fuzzing of `prepare` (hypothesis): malformed raw files in each raw schema.

Valid raw files of each schema come from the synthetic generator (a few clients). Each example mutates one
file of one schema — a BOM, CRLF line ends, leading-zero ids, thousands separators (quoted or not), extra or
missing fields on a row, a blank line, a truncated file, random bytes overwritten or inserted — and runs the
prepare stage on it. The property: prepare either succeeds (its _SUCCESS.json counts the repairs, every
event and target is well-formed) or raises one DataError/ConfigError whose one-line message names the file,
and leaves no output folder and no temporary folder behind. Any other exception (a traceback) fails.

Bounded and deterministic: a fixed number of examples per schema (FUZZ_EXAMPLES, default 100; 300 in all),
`derandomize=True` (the examples are a function of the test alone), no example database. The number of
inputs tried and how they ended are printed in pytest's summary.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from llm4trx import prepare
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.sections import DatasetSpec
from llm4trx.core.stage import read_success, stage_dir
from llm4trx.data import synthetic

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# schema -> (files of the schema, the id column, the amount column)
SCHEMAS = {
    "rosbank": (["train.csv"], "cl_id", "amount"),
    "age_pred": (["transactions_train.csv", "train_target.csv"], "client_id", "amount_rur"),
    "gender": (["transactions.csv", "gender_train.csv"], "customer_id", "amount"),
}
OUTCOMES: Counter = Counter()  # "schema: ok" / "schema: DataError" ..., printed by conftest's summary hook


@pytest.fixture(scope="module")
def valid_raw(tmp_path_factory):
    """{schema: (cfg, raw folder of valid files)}: 40 clients with 3-8 transactions each."""
    base = tmp_path_factory.mktemp("fuzz_raw")
    out = {}
    for schema in SCHEMAS:
        cfg = compose(
            [
                f"paths.output_root={base}",
                f"dataset.schema={schema}",
                "dataset.n_clients=40",
                "dataset.min_events=3",
                "dataset.max_events=8",
                "splits.n_folds=2",
                "progress=false",
            ]
        )
        raw = synthetic.ensure_raw(DatasetSpec.from_config(cfg.dataset))
        # Resolved once: per example only paths change (re-resolving interpolations was most of the time).
        out[schema] = (OmegaConf.to_container(cfg, resolve=True), raw)
    return out


# ------------------------------------------------------------------------------------------ mutations


def split_lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def field_index(data: bytes, name: str) -> int | None:
    header = split_lines(data)[0].decode("utf-8", "replace").lstrip("\ufeff").strip("\r").split(",")
    return header.index(name) if name in header else None


def edit_field(data: bytes, row: int, column: int | None, edit) -> bytes:
    lines = split_lines(data)
    body = [i for i in range(1, len(lines)) if lines[i].strip()]
    if not body or column is None:
        return data
    i = body[row % len(body)]
    fields = lines[i].split(b",")
    if column < len(fields):
        fields[column] = edit(fields[column])
        lines[i] = b",".join(fields)
    return b"\n".join(lines)


def thousands(value: bytes, quoted: bool) -> bytes:
    try:
        number = float(value)
    except ValueError:
        return value
    text = f"{abs(number) * 1000 + 1234:,.2f}".encode()
    return b'"' + text + b'"' if quoted else text


KINDS = [
    "bom",
    "crlf",
    "leading_zero_ids",
    "leading_zero_ids_all",
    "thousands",
    "thousands_quoted",
    "extra_column",
    "missing_field",
    "blank_line",
    "truncate",
    "corrupt",
    "insert_bytes",
    "combined",
]
BYTES = [b",", b"\n", b'"', b"\x00", b"\xff", b"\xc3", b"-", b"x", b"9", b" ", b"\r", b"."]

# A recipe: (kind, row, fraction, [(fraction, byte), ...]); small, so a failing example prints in a line.
recipes = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 10_000),
    st.floats(0, 1),
    st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(BYTES) | st.binary(min_size=1, max_size=1)),
        min_size=1,
        max_size=4,
    ),
)


def mutate(data: bytes, recipe, id_column: str, amount_column: str) -> bytes:
    kind, row, fraction, edits = recipe
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind.startswith("leading_zero_ids"):
        column = field_index(data, id_column)
        for r in range(len(split_lines(data))) if kind.endswith("_all") else [row]:
            data = edit_field(data, r, column, lambda v: b"00" + v)
        return data
    if kind in ("thousands", "thousands_quoted"):
        column = field_index(data, amount_column)
        return edit_field(data, row, column, lambda v: thousands(v, kind == "thousands_quoted"))
    if kind == "extra_column":
        return edit_field(data, row, 0, lambda v: v + b",extra")
    if kind == "missing_field":
        lines = split_lines(data)
        i = 1 + row % max(len(lines) - 2, 1)
        lines[i] = lines[i].rsplit(b",", 1)[0]
        return b"\n".join(lines)
    if kind == "blank_line":
        lines = split_lines(data)
        lines.insert(1 + row % max(len(lines) - 1, 1), b"")
        return b"\n".join(lines)
    if kind == "truncate":
        return data[: int(fraction * len(data))]
    if kind in ("corrupt", "insert_bytes"):
        for at, byte in edits:
            i = int(at * len(data))
            data = data[:i] + byte + data[i + (1 if kind == "corrupt" else 0) :]
        return data
    # combined: a real warehouse export mixes them
    data = b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n")
    return edit_field(data, row, field_index(data, id_column), lambda v: b"0" + v)


# ------------------------------------------------------------------------------------------ the property


def check_prepare(cfg, raw: Path, schema: str, name: str, kind: str, mutated: bytes) -> None:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        shutil.copytree(raw, work / "raw")
        (work / "raw" / name).write_bytes(mutated)
        plain = {
            **cfg,
            "paths": {
                "output_root": str(work / "out"),
                "experiment_dir": str(work / "out"),
                "shared_dir": str(work / "out" / "shared"),
                "run_dir": str(work / "out" / "seed"),
            },
            "dataset": {**cfg["dataset"], "generator": None, "raw_dir": str(work / "raw")},
        }
        run_cfg = OmegaConf.create(plain)
        final = stage_dir(run_cfg, "prepare")
        try:
            prepare.run(run_cfg)
        except (DataError, ConfigError) as err:
            message = str(err)
            assert "\n" not in message and message, f"{kind}: not one line: {message!r}"
            if isinstance(err, DataError):
                assert err.path.endswith(name) or str(work / "raw") in err.path, f"{kind}: names {err.path}"
                if kind in ("extra_column", "missing_field", "thousands") and err.path.endswith(name):
                    assert err.row is not None, f"{kind}: no row in {message!r}"
            assert not final.exists(), f"{kind}: partial output after {message}"
            OUTCOMES[f"{schema}: {type(err).__name__}"] += 1
        else:
            done = read_success(final)
            assert done is not None and isinstance(done["counts"]["repairs"], dict)
            assert done["counts"]["events"] > 0
            OUTCOMES[f"{schema}: ok"] += 1
        leftovers = [p.name for p in final.parent.glob(".*")] if final.parent.exists() else []
        assert not [p for p in leftovers if ".tmp-" in p or ".old-" in p], f"{kind}: temporary folders {leftovers}"


@pytest.mark.parametrize("schema", list(SCHEMAS))
def test_prepare_on_malformed_files_succeeds_or_fails_with_one_line(valid_raw, schema):
    cfg, raw = valid_raw[schema]
    files, id_column, amount_column = SCHEMAS[schema]
    originals = {name: (raw / name).read_bytes() for name in files}

    @settings(settings.get_profile("fuzz"))
    @given(data=st.data())
    def fuzz(data):
        name = data.draw(st.sampled_from(files), label="file")
        recipe = data.draw(recipes, label="recipe")
        mutated = mutate(originals[name], recipe, id_column, amount_column)
        OUTCOMES[f"{schema}: tried"] += 1
        check_prepare(cfg, raw, schema, name, recipe[0], mutated)

    fuzz()
    assert OUTCOMES[f"{schema}: tried"] >= EXAMPLES


# ------------------------------------------------------------------------------------------ the decisions, one each


@pytest.mark.parametrize(
    "data, says",
    [
        (b"id,amount\n1,2.5\n2,3.5,extra\n3,1\n", "row 3: 3 fields where the header has 2"),
        (b"id,amount\n1,2.5\n2,1,234.50\n", "row 3: 3 fields where the header has 2"),  # unquoted thousands separator
        (b'id,amount\n1,2.5\n2,"1,234.50"\n', "column 'amount', row 3: value '1,234.50' is not a number"),
        (b"id,amount\n1,2.5\n2\n", "row 3: 1 fields where the header has 2"),  # truncated last line
        (b"id,amount\n1,2.5\n\n2,1\n", "column 'id', row 3: missing value"),  # blank line inside
        (b'id,amount\n"1,2.5\n2,1\n', "row 2: 1 fields where the header has 2"),  # unterminated quote
    ],
)
def test_malformed_lines_are_errors_at_their_line(tmp_path, data, says):
    import pyarrow as pa

    from llm4trx.data import rawcsv

    path = tmp_path / "t.csv"
    path.write_bytes(data)
    with pytest.raises(DataError) as err:
        table = rawcsv.read_csv(path, {"id": pa.string(), "amount": pa.float64()})
        rawcsv.require_present(path, table, "id")
    assert says in str(err.value) and str(path) in str(err.value)


def test_bom_crlf_leading_zeros_and_trailing_blank_lines_are_read(tmp_path):
    import pyarrow as pa

    from llm4trx.data import rawcsv

    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfid,amount\r\n007,2.5\r\n7,-1\r\n\r\n\r\n")
    table = rawcsv.read_csv(path, {"id": pa.string(), "amount": pa.float64()})
    assert table.to_pylist() == [{"id": "007", "amount": 2.5}, {"id": "7", "amount": -1.0}]  # ids are strings
