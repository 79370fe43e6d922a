"""The stage contract declared once (core/registry.py): every file a stage writes is named there only, and
read and written by its one owner module; the labeled clients of validate and finetune come from one reader."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm4trx.core import registry

SOURCE = Path(__file__).resolve().parent.parent / "source" / "llm4trx"


def artifacts() -> list[tuple[str, registry.Artifact]]:
    found = [("*", registry.SUCCESS)]
    found += [(stage.name, a) for stage in registry.STAGES.values() for a in stage.writes]
    return found


def modules() -> dict[str, ast.Module]:
    return {
        "llm4trx." + ".".join(path.relative_to(SOURCE).with_suffix("").parts): ast.parse(path.read_text())
        for path in sorted(SOURCE.rglob("*.py"))
    }


def docstrings(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (prose may name files)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_file_names_are_spelt_in_the_registry_only():
    names = {a.path for _, a in artifacts() if "{" not in a.path}
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in sorted(names)) + r")(?!\w)")
    offenders = []
    for module, tree in modules().items():
        if module == "llm4trx.core.registry":
            continue
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                match = pattern.search(node.value)
                if match:
                    path = SOURCE.parent / (module.replace(".", "/") + ".py")
                    offenders.append(f"{path.relative_to(SOURCE.parent.parent)}:{node.lineno}: {match.group(1)!r}")
    assert not offenders, "artifact file names outside core/registry.py (use the owner's path function):\n" + "\n".join(
        offenders
    )


def file_calls(tree: ast.Module) -> list[tuple[int, str, str]]:
    """(line, stage, artifact) of every `registry.file("stage", "name", ...)` call."""
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "file"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "registry"
        ):
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args[:2]]
            calls.append((node.lineno, *args))
    return calls


def test_each_artifact_is_reached_through_its_owner_only():
    declared = {(stage, a.name): a for stage, a in artifacts()}
    used = set()
    wrong = []
    for module, tree in modules().items():
        for line, stage, name in file_calls(tree):
            # a stage given as a variable (embed | coles embeddings): every stage's artifact of that name
            keys = [(stage, name)] if stage is not None else [k for k in declared if k[1] == name]
            assert keys and all(k in declared for k in keys), f"{module}:{line}: {stage}/{name} is not declared"
            for key in keys:
                used.add(key)
                if declared[key].owner != module:
                    wrong.append(f"{module}:{line}: {key[0]}/{name} belongs to {declared[key].owner}")
    assert not wrong, "\n".join(wrong)
    for (stage, name), artifact in declared.items():
        importlib.import_module(artifact.owner)  # the owner exists
        if stage != "*":
            assert (stage, name) in used, f"{stage}/{name}: its owner {artifact.owner} never asks for its path"


def test_the_registry_answers_paths_and_names_unknown_artifacts():
    assert registry.file("text", "texts", split="val") == "val.jsonl"
    assert registry.file("validate", "success") == "_SUCCESS.json"
    with pytest.raises(KeyError, match="stage 'prepare' writes no 'predictions'; it writes: events, targets, splits"):
        registry.file("prepare", "predictions")


def test_validate_and_finetune_read_the_same_labeled_clients(tmp_path):
    """One reader (data.splits.load_labels): finetune sees the same clients, targets and folds as validate (its
    rows in string order, validate's in natural order), and never the test labels."""
    from llm4trx.core.sections import SplitsSpec
    from llm4trx.data.splits import load_labels, make_splits, write_splits, write_targets
    from llm4trx.lm.supervised import load_protocol

    ids = [str(i) for i in range(1, 61)]  # "10" < "2" as strings: the two orders differ
    targets = pd.DataFrame({"client_id": ids[:50], "target": np.arange(50) % 2})
    splits = make_splits(ids, targets, SplitsSpec(test_fraction=0.2, val_fraction=0.1, n_folds=3, random_state=7))
    write_splits(tmp_path, splits)
    write_targets(tmp_path, targets)
    labels = load_labels(tmp_path, 3)
    protocol = load_protocol(tmp_path, 3, 2)
    assert list(labels.train_ids) != list(protocol.train_ids)
    assert list(protocol.train_ids) == sorted(labels.train_ids)
    assert dict(zip(labels.train_ids, zip(labels.train_y, labels.folds))) == dict(
        zip(protocol.train_ids, zip(protocol.train_y, protocol.folds))
    )
    assert sorted(protocol.test_ids) == sorted(labels.test_ids) and len(labels.test_ids) == 10
    test = set(labels.test_ids)
    targets[~targets["client_id"].isin(test)].to_parquet(tmp_path / registry.file("prepare", "targets"))
    assert list(load_protocol(tmp_path, 3, 2).train_ids) == list(protocol.train_ids)  # test labels not needed
    with pytest.raises(Exception, match="is labeled in splits.parquet but has no target"):
        load_labels(tmp_path, 3)
