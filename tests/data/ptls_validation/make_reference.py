"""Builds the fixture of tests/test_protocol_reference.py and runs ptls-validation on it (see README.md here).

    # 1. the fixture (our venv: uses llm4trx's split protocol)
    PYTHONPATH=source .venv/bin/python tests/data/ptls_validation/make_reference.py fixture
    # 2. the reference scores (a separate venv with ptls-validation's needs; never our .venv)
    PYTHONPATH=/work/ptlsval-src /work/ptlsval-venv/bin/python tests/data/ptls_validation/make_reference.py reference

Only ptls-validation's outputs are stored here (reference_scores.json, reference_folds.json); its code is
run from its own checkout and never copied. Step 2 writes one embeddings_validation config per task with our
LightGBM parameters (params.json) and reads the per-fold results.json files and fold pickles it writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
TASKS = ("binary", "multiclass")
N_CLASSES = {"binary": 2, "multiclass": 4}
FEATURES = ("emb", "agg")  # float32 matrices, as our pipeline writes every feature set
SETS = {"emb": ["emb"], "agg": ["agg"], "emb+agg": ["emb", "agg"]}
METRICS = {"binary": ["auroc", "accuracy"], "multiclass": ["accuracy", "auroc"]}
SPLITS = {"test_fraction": 0.15, "n_folds": 5, "random_state": 42, "val_fraction": 0.05}
N_CLIENTS, N_LABELED = 640, 600


def fixture() -> None:
    """Client ids of 1 to 5 digits (their string order is not their numeric order), 40 unlabeled clients,
    targets that depend on the features, splits by llm4trx's protocol, the LightGBM parameters of our
    default config (validate.lightgbm_seed=fixed)."""

    from llm4trx.core.config import compose
    from llm4trx.data.embeddings import embeddings_frame
    from llm4trx.core.sections import SplitsSpec
    from llm4trx.data.splits import make_splits, natural_sorted
    from llm4trx.core.sections import ValidationSpec
    from llm4trx.evaluation.validation import lightgbm_params

    rng = np.random.default_rng(2024)
    ids = natural_sorted(str(i) for i in rng.choice(np.arange(1, 100_000), N_CLIENTS, replace=False))
    emb = rng.standard_normal((N_CLIENTS, 12)).astype(np.float32)
    agg = np.abs(rng.standard_normal((N_CLIENTS, 6)) * [1, 10, 100, 1, 5, 50]).astype(np.float32)
    score = emb[:, 0] + 0.7 * emb[:, 1] * emb[:, 2] + 0.02 * agg[:, 1] - 0.005 * agg[:, 2]
    labeled = rng.permutation(N_CLIENTS)[:N_LABELED]
    noise = rng.standard_normal(N_CLIENTS)
    params = {}
    for task in TASKS:
        out = HERE / task
        out.mkdir(exist_ok=True)
        latent = score + noise
        if task == "binary":
            y = (latent > np.median(latent)).astype(np.int64)
        else:
            y = np.digitize(latent, np.quantile(latent, [0.25, 0.5, 0.75])).astype(np.int64)
        targets = pd.DataFrame({"client_id": [ids[i] for i in sorted(labeled)], "target": y[sorted(labeled)]})
        splits = make_splits(ids, targets, SplitsSpec(**SPLITS))
        # As prepare writes them: targets of the labeled clients in the splits' (natural) order.
        targets = targets.set_index("client_id").loc[splits.loc[splits["labeled"], "client_id"]].reset_index()
        targets.to_parquet(out / "targets.parquet", index=False)
        splits.to_parquet(out / "splits.parquet", index=False)
        cfg = compose(["dataset=synthetic", f"dataset.schema={'rosbank' if task == 'binary' else 'age_pred'}"])
        assert cfg.dataset.task == task, cfg.dataset.task
        params[task] = lightgbm_params(ValidationSpec.from_config(cfg))
    # embeddings_frame writes the ids as strings sorted as strings: the file order is not the protocol's.
    embeddings_frame("client_id", ids, emb).to_parquet(HERE / "features_emb.parquet", index=False)
    embeddings_frame("client_id", ids, agg).to_parquet(HERE / "features_agg.parquet", index=False)
    meta = {"lightgbm": params, "metrics": METRICS, "splits": SPLITS, "feature_sets": SETS}
    (HERE / "params.json").write_text(json.dumps(meta, indent=2) + "\n")
    print("fixture written:", sorted(p.name for p in HERE.rglob("*.parquet")))


SCORERS = {  # embeddings_validation metrics; `response_method` replaces the `needs_proba` scikit-learn 1.6 removed
    "auroc": {
        "binary": {"response_method": "predict_proba"},
        "multiclass": {"response_method": "predict_proba", "multi_class": "ovr"},
    },
    "accuracy": {"binary": {}, "multiclass": {}},  # make_scorer's default response_method is "predict"
}


def reference_config(task: str, work: Path, lightgbm: dict, n_jobs: int = 1) -> dict:
    data = HERE / task
    feature_file = {name: {"file_name": str(HERE / f"features_{name}.parquet")} for name in FEATURES}
    meta = json.loads((HERE / "params.json").read_text())
    return {
        "environment": {"work_dir": str(work / "work")},
        "report_file": str(work / "report.txt"),
        # The target file: targets.parquet (natural id order); int ids, as ptls-experiments' configs read them.
        "target": {
            "file_name": str(data / "targets.parquet"),
            "cols_id": ["client_id"],
            "cols_id_type": ["int"],
            "col_target": "target",
        },
        "split": {
            "fit_ids": True,  # as the published configs: train ids = the target file less the test ids
            "train_id": {"file_name": str(data / "targets.parquet"), "drop_cols": ["target"]},
            "test_id": {"file_name": str(work / "test_ids.csv")},
            "cv_split_count": meta["splits"]["n_folds"],
            "is_stratify": True,
            "random_state": meta["splits"]["random_state"],
        },
        "features": {
            name: {"enabled": True, "target_options": {}, "read_params": [feature_file[p] for p in parts]}
            for name, parts in meta["feature_sets"].items()
        },
        "external_scores": {},
        "models": {
            "lgbm": {
                "enabled": True,
                "cpu_count": n_jobs,
                "model": {"_target_": "lightgbm.LGBMClassifier", **lightgbm, "n_jobs": n_jobs},
                "preprocessing": [{"_target_": "sklearn.preprocessing.MaxAbsScaler"}],
            }
        },
        "metrics": {
            m: {
                "enabled": True,
                "score_func": f"sklearn.metrics.{'roc_auc_score' if m == 'auroc' else 'accuracy_score'}",
                "scorer_params": SCORERS[m][task],
            }
            for m in meta["metrics"][task]
        },
        "report": {
            "is_check_train": False,
            "error_handling": "fail",
            "print_all_metrics": False,
            "metrics": {m: {"float_format": "{:.4f}", "split_columns": True} for m in meta["metrics"][task]},
        },
    }


def reference() -> None:
    import pickle

    import yaml

    meta = json.loads((HERE / "params.json").read_text())
    scores, folds, versions = {}, {}, {}
    for task in TASKS:
        with tempfile.TemporaryDirectory(prefix=f"ptlsval-{task}-") as tmp:
            work = Path(tmp)
            splits = pd.read_parquet(HERE / task / "splits.parquet")
            splits.loc[splits["split"].eq("test") & splits["labeled"], ["client_id"]].to_csv(
                work / "test_ids.csv", index=False
            )
            (work / "conf.yaml").write_text(yaml.safe_dump(reference_config(task, work, meta["lightgbm"][task])))
            cmd = [
                sys.executable,
                "-m",
                "embeddings_validation",
                f"--config-path={work}",
                "--config-name=conf",
                "+workers=1",
                "+total_cpu_count=1",
                f"hydra.run.dir={work / 'hydra'}",
            ]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, cwd=work)
            scores[task] = {}
            for name in meta["feature_sets"]:
                rows = []
                for fold in range(meta["splits"]["n_folds"]):
                    [result] = json.loads((work / "work" / f"m_lgbm__f_{name}__i_{fold}" / "results.json").read_text())
                    rows.append(
                        {
                            "fold": fold,
                            **{
                                m: {
                                    "val": result["scores_valid"][m],
                                    "test": result["scores_test"][m],
                                    "n_val": result["scores_valid"]["cnt_samples"],
                                    "n_test": result["scores_test"]["cnt_samples"],
                                }
                                for m in meta["metrics"][task]
                            },
                        }
                    )
                scores[task][name] = rows
            folds[task] = {}
            for fold in range(meta["splits"]["n_folds"]):
                with open(work / "work" / "folds" / f"target_valid_{fold}.pickle", "rb") as f:
                    folds[task][str(fold)] = [str(i) for i in pickle.load(f).df["client_id"]]
            with open(work / "work" / "folds" / "target_test.pickle", "rb") as f:
                folds[task]["test"] = [str(i) for i in pickle.load(f).df["client_id"]]
            (HERE / task / "reference_report.txt").write_text((work / "report.txt").read_text())
    import importlib.metadata as md

    versions = {
        p: md.version(p)
        for p in ("scikit-learn", "lightgbm", "numpy", "pandas", "scipy", "luigi", "hydra-core", "omegaconf", "pyarrow")
    }
    versions["python"] = sys.version.split()[0]
    (HERE / "reference_scores.json").write_text(json.dumps({"versions": versions, "scores": scores}, indent=2) + "\n")
    (HERE / "reference_folds.json").write_text(json.dumps(folds) + "\n")
    print("reference written:", versions)


if __name__ == "__main__":
    {"fixture": fixture, "reference": reference}[sys.argv[1]]()
