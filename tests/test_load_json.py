"""core.errors.load_json: the readers of the stages' JSON files (fine-tuning curves, the model record, results)
name the file and the line of a malformed one."""

from __future__ import annotations

import pytest

from llm4trx.core.errors import DataError, load_json
from llm4trx.data import curves, model_record, results


def test_load_json_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"a": 1,\n "b": }\n')
    with pytest.raises(DataError) as err:
        load_json(path)
    assert str(err.value).startswith(f"{path}, row 2: not valid JSON (Expecting value)"), str(err.value)
    path.write_text('{"a": [1, 2]}')
    assert load_json(path) == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("path_of", "read"),
    [
        (curves.curves_path, curves.read_curves),
        (lambda folder: folder / model_record.RECORD, model_record.read_record),
        (lambda folder: results.results_path(folder, "validate"), results.read_results),
    ],
)
def test_the_readers_report_a_malformed_file(tmp_path, path_of, read):
    path = path_of(tmp_path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=r", row 1: not valid JSON \("):
        read(tmp_path)
