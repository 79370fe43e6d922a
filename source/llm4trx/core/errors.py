"""Errors a user can act on. Entry points print them as one line and exit with status 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Llm4trxError(Exception):
    """Base class: a problem with the user's input, config or environment (not a bug in llm4trx)."""


class ConfigError(Llm4trxError):
    """The composed config asks for something impossible or inconsistent."""


class StageInputMissing(Llm4trxError):
    """A stage was asked for before the stages it reads from have finished."""


class DataError(Llm4trxError):
    """Malformed input data. Names the file and, where they apply, the column and the row."""

    def __init__(self, path, message: str, column: str | None = None, row: int | None = None):
        self.path, self.column, self.row, self.message = str(path), column, row, message
        where = self.path
        if column is not None:
            where += f", column {column!r}"
        if row is not None:
            # Rows are reported 1-based as a spreadsheet or `sed -n Np` would show them (header is line 1).
            where += f", row {row}"
        super().__init__(f"{where}: {message}")


def load_json(path) -> Any:
    """The JSON document in the file `path`; a DataError naming the file and the line where it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON ({err.msg})", row=err.lineno) from None
