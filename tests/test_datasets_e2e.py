"""Every shipped and documented dataset through every stage to the report: the real age_pred sample and each
schema of the synthetic generator (rosbank, age_pred, gender), with the default experiment at tiny sizes.

The rosbank schema is the default dataset: tests/test_pipeline.py runs it through every stage to the report
(run.sh, then run_multi_seed.sh), so it is not repeated here."""

from __future__ import annotations

import json
import re

import pytest

from pipeline_helpers import TINY, run_script

pytestmark = pytest.mark.slow

SMALL = [o for o in TINY if not o.startswith(("dataset.n_clients=", "trainer.max_duration=", "trainer.save_interval="))]
SMALL += ["trainer.max_duration=6ba", "trainer.save_interval=6ba", "seeds=[1]"]

DATASETS = {
    "age_pred": ["dataset.schema=age_pred", "dataset.n_clients=160"],
    "gender": ["dataset.schema=gender", "dataset.n_clients=160"],
    "age_pred_sample": ["dataset=age_pred_sample"],
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_default_experiment_runs_end_to_end(name, tmp_path):
    root = tmp_path / "outputs"
    overrides = SMALL + DATASETS[name]
    report = tmp_path / "report"
    proc = run_script(
        "scripts/run_multi_seed.sh", *overrides, f"paths.output_root={root}", f"report.dir={report}", timeout=600
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    summary = json.loads((report / "report.json").read_text())
    (dataset,) = summary["datasets"].values()
    assert dataset["seeds"] == [1] and {"llm", "aggregates", "random"} <= set(dataset["feature_sets"])
    results_md = next(root.glob("smoke/*/seed_1/validation/results.md")).read_text()
    if name == "age_pred_sample":  # 10 transactions per client, CoLES needs 15: skipped, and the table says so
        assert "coles" not in dataset["feature_sets"]
        assert re.search(r"Skipped: coles: CoLES skipped: 0 of \d+ pretraining clients", results_md)
        assert "coles: up to date, skipped" in output or "coles: done in" in output
    else:
        assert "coles" in dataset["feature_sets"]
