"""Reading raw CSV files fast (pyarrow) with errors that name the file, the column and the line.

The happy path is a typed pyarrow read, streamed in blocks (`CsvBlocks`, pyarrow's `open_csv`) so that memory
does not grow with the file; `read_csv` reads a whole (small) file at once. Only when a typed read fails is
the file read again column by column as strings to find the first offending line, so error reporting costs
nothing on good data (that error path holds the whole file in memory).
Line numbers are 1-based as in the file, the header being line 1. A UTF-8 BOM and CRLF line ends are read
as usual; a line with more or fewer fields than the header and a value spanning lines (an unterminated
quote) are errors at their line. `read_csv` (targets) also treats a blank line inside the file as an error at
its line; the streamed `CsvBlocks` (event files) skips blank lines, so a line number after one is one too low.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from llm4trx.core.errors import DataError

HEADER_LINES = 1
PARSE = pacsv.ParseOptions(ignore_empty_lines=False)
BLOCK_BYTES = 64 << 20  # CSV bytes per streamed block (pyarrow's block_size): ~2.5M rows of age_pred


def line_of(row_index: int) -> int:
    """1-based line number in the file of the 0-based data row `row_index`."""
    return int(row_index) + HEADER_LINES + 1


def read_bytes(path: Path) -> bytes:
    """The file's bytes, checked to exist, be non-empty and be valid UTF-8."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path)
    data = path.read_bytes()
    if not data or data.isspace():
        raise DataError(path, "file is empty")
    # Checked in chunks: decoding a multi-GB file at once would hold a second, 1-4x larger copy as str.
    decoder, step = codecs.getincrementaldecoder("utf-8")(), 1 << 26
    view = memoryview(data)
    for start in range(0, len(data), step):
        try:
            decoder.decode(view[start : start + step], final=start + step >= len(data))
        except UnicodeDecodeError as err:
            offset = max(start + err.start - len(decoder.getstate()[0]), 0)
            line = data.count(b"\n", 0, offset) + 1
            raise DataError(
                path,
                f"not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}); re-encode the file as UTF-8",
                row=line,
            ) from None
    return data


def missing_file(path: Path) -> DataError:
    hint = ""
    if path.parent.is_dir():
        near = difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir()], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
    return DataError(path, f"file not found{hint}")


def check_text(path: Path, step: int = 1 << 26) -> tuple[list[str], int]:
    """The checks of `read_bytes` (exists, not empty, valid UTF-8: the same errors) streamed in `step`-byte
    chunks, without holding the file. Returns the header's column names and an upper bound of the number of
    data rows (the line count; blank lines, which the CSV reader skips, make it an overestimate)."""
    path = Path(path)
    if not path.is_file():
        raise missing_file(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    size, start, lines, blank, first, last = path.stat().st_size, 0, 0, True, b"", b""
    with open(path, "rb") as f:
        while start < size:
            chunk = f.read(step)
            if not chunk:
                break
            if start == 0:
                first = chunk
            blank = blank and chunk.isspace()
            try:
                decoder.decode(chunk, final=start + len(chunk) >= size)
            except UnicodeDecodeError as err:
                at = max(err.start - len(decoder.getstate()[0]), 0)
                line = lines + chunk.count(b"\n", 0, at) + 1
                raise DataError(
                    path,
                    f"not valid UTF-8 (byte 0x{chunk[at]:02x} at offset {start + at}); re-encode the file as UTF-8",
                    row=line,
                ) from None
            lines += chunk.count(b"\n")
            start += len(chunk)
            last = chunk
    if size == 0 or blank:
        raise DataError(path, "file is empty")
    lines += not last.endswith(b"\n")  # a last line without a newline
    return header_of(path, first), max(lines - HEADER_LINES, 0)


class CsvBlocks:
    """`read_csv` streamed: iterating gives (index of the block's first data row, block table) in file order.

    The same checks and errors as `read_csv` (file, UTF-8, header, columns, conversion, no data rows) without
    holding the file; `max_rows` bounds the number of rows from above (to preallocate). A conversion error is
    located by re-reading the file as strings (the whole file: error path only).
    """

    def __init__(
        self,
        path: Path,
        types: dict[str, pa.DataType],
        optional: dict[str, pa.DataType] | None = None,
        block_bytes: int = BLOCK_BYTES,
    ):
        self.path = Path(path)
        header, self.max_rows = check_text(self.path, step=min(int(block_bytes), 1 << 26))
        check_header(self.path, header, list(types))
        self.types = dict(types)
        self.types.update({k: v for k, v in (optional or {}).items() if k in header})
        self.block_bytes = int(block_bytes)

    def __iter__(self) -> Iterator[tuple[int, pa.Table]]:
        convert = pacsv.ConvertOptions(include_columns=list(self.types), column_types=self.types)
        first_row = 0
        try:
            reader = pacsv.open_csv(
                self.path, read_options=pacsv.ReadOptions(block_size=self.block_bytes), convert_options=convert
            )
            for batch in reader:
                if batch.num_rows:
                    table = pa.Table.from_batches([batch])
                    check_no_line_breaks(self.path, table, first_row)
                    yield first_row, table
                    first_row += batch.num_rows
        except pa.ArrowKeyError as err:  # a header pyarrow reads differently from `header_of`: still one line
            raise DataError(self.path, f"cannot read the header: {err}") from None
        except pa.ArrowInvalid as err:
            data = self.path.read_bytes()
            locate_bad_row(self.path, data, len(header_of(self.path, data)))
            locate_bad_value(self.path, data, self.types)
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(self.path, f"cannot parse as CSV: {first}") from None
        if first_row == 0:
            raise DataError(self.path, "file has a header but no data rows")


def header_of(path: Path, data: bytes) -> list[str]:
    """The column names of the header line as pyarrow reads them (RFC 4180 quoting, a stray quote kept, spaces
    kept), so that a column this check finds is one pyarrow finds too."""
    end = data.find(b"\n")
    first = data[: end if end >= 0 else len(data)].decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r")
    return next(csv.reader([first]), [])


def check_header(path: Path, header: list[str], required: list[str]) -> None:
    """DataError for the first required column missing from `header`, suggesting a close name."""
    for name in required:
        if name not in header:
            near = difflib.get_close_matches(name, header, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise DataError(path, f"missing column (file has {header}){hint}", column=name)


def read_csv(path: Path, types: dict[str, pa.DataType], optional: dict[str, pa.DataType] | None = None) -> pa.Table:
    """Columns `types` (all required) and `optional` (if present) of a CSV file as a pyarrow table.

    Numeric columns must parse entirely; string columns keep empty fields as "" (never null).
    """
    path = Path(path)
    data = read_bytes(path)
    header = header_of(path, data)
    check_header(path, header, list(types))
    wanted = dict(types)
    wanted.update({k: v for k, v in (optional or {}).items() if k in header})
    convert = pacsv.ConvertOptions(include_columns=list(wanted), column_types=wanted)
    if data.endswith((b"\n\n", b"\n\r\n")):  # blank lines at the very end: harmless, dropped
        data = data.rstrip(b"\r\n") + b"\n"
    try:
        # Blank lines inside the file are errors (not skipped): skipping them would shift every line number.
        table = pacsv.read_csv(io.BytesIO(data), convert_options=convert, parse_options=PARSE)
    except pa.ArrowKeyError as err:
        raise DataError(path, f"cannot read the header: {err}") from None
    except pa.ArrowInvalid as err:
        locate_bad_row(path, data, len(header))
        locate_bad_value(path, data, wanted)
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(path, f"cannot parse as CSV: {first}") from None
    if table.num_rows == 0:
        raise DataError(path, "file has a header but no data rows")
    check_no_line_breaks(path, table)
    return table


def locate_bad_row(path: Path, data: bytes, n_header: int) -> None:
    """DataError at the first line whose number of fields differs from the header's (an extra or missing
    comma: an extra column, a thousands separator, a truncated line). Re-reads single-threaded as strings,
    where pyarrow knows the line numbers."""
    bad = []

    def keep(row) -> str:
        bad.append(row)
        return "skip"

    try:
        pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(use_threads=False),
            parse_options=pacsv.ParseOptions(invalid_row_handler=keep, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types={}, strings_can_be_null=False, include_columns=[], include_missing_columns=False
            ),
        )
    except pa.ArrowInvalid:
        pass
    if bad:
        row = bad[0]
        text = (row.text or "")[:80]
        raise DataError(
            path,
            f"{row.actual_columns} fields where the header has {row.expected_columns} "
            f"({text!r}): an extra or missing comma (thousands separators must not be used), or a "
            f"truncated line; fix or remove the line",
            row=row.number,
        )


def check_no_line_breaks(path: Path, table: pa.Table, first_row: int = 0) -> None:
    """A value holding a line break comes from an unterminated quote, which swallows the lines after it."""
    for name in table.column_names:
        col = table.column(name)
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            continue
        broken = pc.match_substring_regex(col, r"[\r\n]")
        hit = first_true(
            broken.to_numpy(zero_copy_only=False).astype(bool, copy=False)
            if broken.null_count == 0
            else pc.fill_null(broken, False).to_numpy(zero_copy_only=False)
        )
        if hit is not None:
            raise DataError(
                path,
                'a value spans several lines (an unterminated quote "?); fix the quoting of this line',
                column=name,
                row=line_of(first_row + hit),
            )


def locate_bad_value(path: Path, data: bytes, types: dict[str, pa.DataType]) -> None:
    """Re-read as strings and raise DataError at the first value that does not convert to its column type."""
    numeric = [name for name, kind in types.items() if pa.types.is_integer(kind) or pa.types.is_floating(kind)]
    try:
        as_text = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=PARSE,
            convert_options=pacsv.ConvertOptions(
                include_columns=numeric, column_types={n: pa.string() for n in numeric}
            ),
        )
    except pa.ArrowInvalid:
        return  # not a conversion problem; the caller reports pyarrow's own message
    for name in numeric:
        text = as_text.column(name).to_pandas()
        value = pd.to_numeric(text, errors="coerce")
        bad = (
            value.isna()
            & text.notna()
            & (text.str.strip() != "")
            & ~text.str.strip().str.lower().isin(["nan", "na", "n/a", "null", "none", "#n/a"])
        )
        if pa.types.is_integer(types[name]):
            bad |= value.notna() & (value != np.floor(value.fillna(0)))
            bad |= value.notna() & ~text.str.strip().str.fullmatch(r"[+-]?\d+")
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            kind = "an integer" if pa.types.is_integer(types[name]) else "a number"
            raise DataError(path, f"value {text.iloc[i]!r} is not {kind}", column=name, row=line_of(i))


def first_true(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def require_finite(path: Path, table: pa.Table, column: str) -> np.ndarray:
    """The float column as numpy; DataError at the first missing (empty/NaN) or infinite value."""
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    bad = first_true(~np.isfinite(values))
    if bad is not None:
        what = "missing or NaN" if np.isnan(values[bad]) else "infinite"
        raise DataError(path, f"{what} value; every transaction needs a finite amount", column=column, row=line_of(bad))
    return values


def require_present(path: Path, table: pa.Table, column: str) -> pa.ChunkedArray:
    """A column without nulls (numeric) or empty strings (string); DataError at the first gap."""
    col = table.column(column)
    missing = col.is_null()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        missing = pc.or_(missing, pc.equal(pc.utf8_trim_whitespace(col), ""))
    bad = first_true(missing.to_numpy(zero_copy_only=False))
    if bad is not None:
        raise DataError(path, "missing value", column=column, row=line_of(bad))
    return col


FIXED_WIDTH = {"%d": 2, "%m": 2, "%y": 2, "%Y": 4, "%H": 2, "%M": 2, "%S": 2, "%b": 3}
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def parse_fixed_width(col: pa.ChunkedArray, fmt: str) -> np.ndarray | None:
    """datetime64[ns] for formats made only of fixed-width fields (e.g. rosbank's %d%b%y:%H:%M:%S) when every
    string has that width; None when anything does not fit (the caller falls back to strptime, which also
    locates the bad value). Why not strptime: it runs per element and was most of prepare's time on 1M rows;
    this reads the digits straight from the Arrow buffer as a (rows x width) byte matrix."""
    tokens = re.findall(r"%.|[^%]+", fmt)
    if any(t.startswith("%") and t not in FIXED_WIDTH for t in tokens) or not fmt.isascii():
        return None
    width = sum(FIXED_WIDTH.get(t, len(t)) for t in tokens)
    arr = col.combine_chunks()
    if len(arr) == 0 or arr.null_count or arr.type != pa.string():
        return None
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + len(arr) + 1]
    if not np.all(np.diff(offsets) == width):
        return None
    mat = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, width)
    cols = np.ascontiguousarray(mat.T)  # one row per character position: contiguous column arithmetic
    fields, pos = {}, 0
    for tok in tokens:
        w = FIXED_WIDTH.get(tok, len(tok))
        part = cols[pos : pos + w].T
        pos += w
        if tok == "%b":
            upper = (part & 0xDF).astype(np.int64)  # ASCII upper case
            key = upper[:, 0] * 65536 + upper[:, 1] * 256 + upper[:, 2]
            names = np.array([ord(m[0]) * 65536 + ord(m[1]) * 256 + ord(m[2]) for m in MONTHS])
            idx = np.searchsorted(np.sort(names), key).clip(0, 11)
            if not np.all(np.sort(names)[idx] == key):
                return None
            fields["%m"] = np.argsort(names)[idx] + 1
        elif tok.startswith("%"):
            digits = part - np.uint8(48)  # wraps below '0', so one bound checks both sides
            if digits.max() > 9:
                return None
            value = np.zeros(len(mat), dtype=np.int64)
            for i in range(w):
                value = value * 10 + digits[:, i]
            fields[tok] = value
        elif not np.all(part == np.frombuffer(tok.encode(), dtype=np.uint8)):
            return None
    year = fields.get("%Y", np.where(fields.get("%y", 0) < 69, 2000, 1900) + fields.get("%y", 0))  # POSIX %y rule
    month, day = fields.get("%m", np.ones_like(year)), fields.get("%d", np.ones_like(year))
    hms = [fields.get(k, np.zeros_like(year)) for k in ("%H", "%M", "%S")]
    if (
        month.min() < 1
        or month.max() > 12
        or day.min() < 1
        or hms[0].max() > 23
        or hms[1].max() > 59
        or hms[2].max() > 61
    ):
        return None
    first = ((year - 1970) * 12 + month - 1).astype("datetime64[M]")
    if np.any(day > ((first + 1).astype("datetime64[D]") - first.astype("datetime64[D]")).astype(np.int64)):
        return None
    seconds = (first.astype("datetime64[D]") + (day - 1)).astype("datetime64[s]") + (
        hms[0] * 3600 + hms[1] * 60 + hms[2]
    )
    return seconds.astype("datetime64[ns]")


def parse_datetime_strings(path: Path, col: pa.ChunkedArray, column: str, fmt: str) -> np.ndarray:
    """datetime64[ns] from strings in strftime format `fmt`; DataError at the first that does not parse."""
    col = pc.utf8_trim_whitespace(col)
    fast = parse_fixed_width(col, fmt)
    if fast is not None:
        return fast
    # Other formats: pandas (validates calendar dates, unlike pyarrow's strptime which accepts 31FEB),
    # once per distinct string since dates repeat a lot.
    encoded = pc.dictionary_encode(col.combine_chunks())
    uniques = pd.to_datetime(pd.Series(encoded.dictionary.to_numpy(zero_copy_only=False)), format=fmt, errors="coerce")
    parsed = pa.array(uniques.to_numpy("datetime64[ns]")).take(encoded.indices)
    values = parsed.to_numpy(zero_copy_only=False).astype("datetime64[ns]")
    bad = first_true(np.isnat(values))
    if bad is not None:
        raise DataError(
            path, f"cannot parse date {col[bad].as_py()!r} with format {fmt!r}", column=column, row=line_of(bad)
        )
    return values


def categories(col: pa.ChunkedArray) -> pd.Categorical:
    """A string column, whitespace-trimmed, as a pandas Categorical (cheap to convert, sort and compare)."""
    encoded = pc.dictionary_encode(pc.utf8_trim_whitespace(col).combine_chunks())
    return pd.Categorical.from_codes(
        encoded.indices.to_numpy(zero_copy_only=False),
        categories=pd.Index(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object),
    )


def days_since(path: Path, days: np.ndarray, column: str, origin: str) -> np.ndarray:
    """datetime64[ns] of integer day indices counted from `origin` (anonymized datasets)."""
    bad = first_true(days < 0)
    if bad is not None:
        raise DataError(path, f"negative day index {days[bad]}", column=column, row=line_of(bad))
    return np.datetime64(pd.Timestamp(origin), "ns") + days.astype("timedelta64[D]").astype("timedelta64[ns]")


DAY_TIME = r"^\s*(?P<day>\d+) (?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})\s*$"


def parse_day_time(path: Path, col: pa.ChunkedArray, column: str, origin: str) -> np.ndarray:
    """datetime64[ns] from 'D HH:MM:SS' (day index + time of day, the gender dataset's tr_datetime)."""
    parts = pc.extract_regex(col.combine_chunks(), DAY_TIME)
    bad = first_true(parts.is_null().to_numpy(zero_copy_only=False))
    if bad is not None:
        raise DataError(path, f"cannot parse {col[bad].as_py()!r} as 'DAY HH:MM:SS'", column=column, row=line_of(bad))
    field = {k: parts.field(k).cast(pa.int64()).to_numpy() for k in ("day", "h", "m", "s")}
    # Real gender data has a few times like 24:00:00; they stay valid as seconds past the day's start.
    seconds = field["h"] * 3600 + field["m"] * 60 + field["s"]
    bad = first_true((field["m"] > 59) | (field["s"] > 60))
    if bad is not None:
        raise DataError(path, f"invalid time of day {col[bad].as_py()!r}", column=column, row=line_of(bad))
    return days_since(path, field["day"], column, origin) + seconds.astype("timedelta64[s]").astype("timedelta64[ns]")
