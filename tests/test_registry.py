"""The stage registry (llm4trx.core.registry) and the hashes built from it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from llm4trx.core import registry
from llm4trx.core.config import compose
from llm4trx.core.stage import hash_payload, stage_dir

# Every hashed section's leaf keys are tried under configs where optional sections exist too.
CONFIGS = {
    "default": [],
    "augment": ["augment=hf", "augment.generator=/models/x", "augment.mix.sources=[hf]"],
    "pretrained_tokenizer": ["tokenizer=pretrained", "tokenizer.path=/models/tok"],
    "finetune": ["finetune=default"],
}


def test_every_stage_has_an_entry_point_module():
    for name in registry.STAGES:
        module = importlib.import_module(f"llm4trx.{name}")  # a missing stage module fails, never skips
        assert callable(getattr(module, "main")), name
        assert callable(getattr(module, "run")), name


def test_pipeline_order_and_optional_stages():
    cfg = compose([])
    assert registry.pipeline(cfg) == [
        "prepare",
        "text",
        "tokenizer",
        "shards",
        "pretrain",
        "export",
        "embed",
        "coles",
        "baselines",  # read only by validate, so right before it
        "validate",
    ]
    assert "augment" in registry.pipeline(compose(CONFIGS["augment"]))
    no_coles = compose(["validate.feature_sets=[llm,aggregates,random]", "validate.concatenations=[llm+aggregates]"])
    assert "coles" not in registry.pipeline(no_coles)
    assert registry.inputs_of(no_coles, "validate") == ["prepare", "baselines", "embed"]
    assert registry.inputs_of(compose(CONFIGS["pretrained_tokenizer"]), "tokenizer") == []
    finetune = compose(CONFIGS["finetune"])
    assert registry.pipeline(finetune) == [
        "prepare",
        "text",
        "tokenizer",
        "shards",
        "pretrain",
        "export",
        "embed",
        "finetune",
        "coles",
        "baselines",
        "validate",
    ]
    assert registry.inputs_of(finetune, "validate")[-1] == "finetune"
    assert registry.inputs_of(finetune, "finetune") == ["prepare", "text", "export"]
    assert registry.inputs_of(compose(["finetune=default", "finetune.model=/models/lm"]), "finetune") == [
        "prepare",
        "text",
    ]
    assert "finetune" not in registry.pipeline(compose(["finetune=default", "finetune.enabled=false"]))


def test_baselines_are_shared_only_when_seed_independent_and_used():
    cfg = compose([])
    assert registry.get("baselines").scope == registry.SHARED and registry.inputs_of(cfg, "baselines") == ["prepare"]
    per_seed = compose(["validate.lightgbm_seed=run"])  # LightGBM's seed follows the run: validate builds them
    assert "baselines" not in registry.pipeline(per_seed) and "baselines" not in registry.inputs_of(
        per_seed, "validate"
    )
    only_llm = compose(["validate.feature_sets=[llm,random]", "validate.concatenations=[]", "validate.random_dim=null"])
    assert "baselines" not in registry.pipeline(only_llm)  # random at the llm's width: known per run only
    fixed_random = compose(
        ["validate.feature_sets=[llm,random]", "validate.concatenations=[]", "validate.random_dim=16"]
    )
    assert "baselines" in registry.pipeline(fixed_random)
    in_a_concatenation = compose(["validate.feature_sets=[llm]", "validate.concatenations=[llm+aggregates]"])
    assert "baselines" in registry.pipeline(in_a_concatenation)
    oracle_elsewhere = compose(["dataset=rosbank", "validate.feature_sets=[llm,oracle]", "validate.concatenations=[]"])
    assert "baselines" not in registry.pipeline(oracle_elsewhere)  # no hidden factors outside synthetic data


def test_download_runs_first_only_for_a_real_dataset_with_files_missing(tmp_path):
    cfg = compose(["dataset=rosbank", f"dataset.raw_dir={tmp_path}"])
    assert registry.pipeline(cfg)[0] == "download"
    for item in cfg.dataset.download.files:
        (tmp_path / item.file).write_text("x")
    assert "download" not in registry.pipeline(cfg)  # everything there: nothing to fetch
    assert "download" not in registry.pipeline(compose(["dataset=custom"]))  # no public source


def test_every_input_comes_earlier_in_the_registry():
    order = list(registry.STAGES)
    for stage in registry.STAGES.values():
        for dep in stage.inputs:
            assert order.index(dep.stage) < order.index(stage.name), (stage.name, dep.stage)


def test_stage_dirs_follow_the_scopes(out_root):
    cfg = compose([f"paths.output_root={out_root}", "seed=7", "experiment_name=exp"])
    for stage in registry.STAGES.values():
        if stage.scope == registry.RAW:  # download writes the dataset's raw_dir itself
            assert stage_dir(cfg, stage.name) == Path(cfg.dataset.raw_dir)
            continue
        base = {"shared": cfg.paths.shared_dir, "seed": cfg.paths.run_dir, "experiment": cfg.paths.experiment_dir}[
            stage.scope
        ]
        assert str(stage_dir(cfg, stage.name)) == f"{base}/{stage.folder}"


def leaves(tree, prefix):
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}")
    else:
        yield prefix, tree


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, value[-1] if value else 1]
    if value is None:
        return 1
    return f"{value}_changed"


@pytest.mark.parametrize("variant", sorted(CONFIGS))
def test_hash_changes_with_every_leaf_key_unless_operational(variant):
    base = compose(CONFIGS[variant])
    # Resolved once into a config without interpolations (what hash_payload sees anyway); each leaf is changed
    # in place and put back, so one leaf costs a hash, not a copy of the whole config (10x cheaper).
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    tried = 0
    for stage in registry.STAGES.values():
        if not stage.when(base):
            continue
        before = hash_payload(base, stage.name)
        assert hash_payload(cfg, stage.name) == before, stage.name
        for section in registry.hashed_sections(base, stage.name):
            node = OmegaConf.select(cfg, section)
            value = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
            for key, leaf in leaves(value, section):
                OmegaConf.update(cfg, key, changed(leaf), merge=False, force_add=True)
                after = hash_payload(cfg, stage.name)
                OmegaConf.update(cfg, key, leaf, merge=False, force_add=True)
                if any(key == op or key.startswith(op + ".") for op in stage.operational):
                    assert after == before, f"{stage.name}: operational key {key} changed the hash"
                else:
                    assert after != before, f"{stage.name}: {key} does not change the hash"
                tried += 1
        assert hash_payload(cfg, stage.name) == before, f"{stage.name}: a changed leaf was not put back"
    assert tried > 100


def test_operational_keys_exist_in_their_sections():
    cfg = compose(CONFIGS["augment"] + CONFIGS["finetune"])
    for stage in registry.STAGES.values():
        for key in stage.operational:
            assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", f"{stage.name}: {key}"


def test_coles_and_aggregates_hash_separately():
    base = compose([])
    aggregates = compose(["validate.aggregates.numeric=[amount,amount]"])
    assert hash_payload(base, "coles") == hash_payload(aggregates, "coles")
    assert hash_payload(base, "validate") != hash_payload(aggregates, "validate")
    coles = compose(["coles.hidden_size=8"])
    assert hash_payload(base, "validate") == hash_payload(coles, "validate")


# One process for all stages (a process per stage cost 11 interpreter and torch starts): before each stage,
# every llm4trx module is dropped from sys.modules, so importing the stage runs its whole llm4trx import graph
# again, as a fresh process would (third-party modules stay loaded: they cannot import a stage).
IMPORTS = """
import json, sys
names = json.loads(sys.argv[1])
found = {}
for name in names:
    for module in [m for m in sys.modules if m == "llm4trx" or m.startswith("llm4trx.")]:
        del sys.modules[module]
    __import__("llm4trx." + name)
    found[name] = [m for m in names if m != name and "llm4trx." + m in sys.modules]
print(json.dumps(found))
"""


def test_stages_do_not_import_each_other():
    """A stage module imports libraries only: importing one stage loads no other stage module."""
    names = list(registry.STAGES)
    out = subprocess.run([sys.executable, "-c", IMPORTS, json.dumps(names)], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(found) == set(names)
    for name, others in found.items():
        assert others == [], f"llm4trx.{name} imports stage(s) {','.join(others)}"


def test_the_stage_import_check_sees_an_import(tmp_path):
    """The check above can fail: a stage that imports another one is reported."""
    package = tmp_path / "llm4trx"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "lib.py").write_text("from llm4trx import b\n")  # through a library, as a stage would
    (package / "a.py").write_text("import llm4trx.lib\n")
    (package / "b.py").write_text("")
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS, json.dumps(["a", "b"])],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        cwd=tmp_path,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"a": ["b"], "b": []}


def core_imports_outside(core: Path) -> list[str]:
    """`file:line module` of every llm4trx import in `core` (also inside functions) that is not llm4trx.core."""
    import ast

    found = []
    for path in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.startswith("llm4trx.") and not name.startswith("llm4trx.core"):
                    found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_core_imports_nothing_outside_core(tmp_path):
    """core/ is the contract every stage and library builds on: it imports no llm4trx module outside it."""
    core = Path(registry.__file__).parent
    assert core_imports_outside(core) == []
    (tmp_path / "bad.py").write_text("def f():\n    from llm4trx.data.splits import load_labels\n")
    assert core_imports_outside(tmp_path) == ["bad.py:2 llm4trx.data.splits"]  # the check sees a lazy import


LIBRARIES = ("data", "evaluation", "generation", "lm", "render")
CONFIG_TRANSLATORS = ("lm/foundry_config.py", "lm/hf_backend.py")  # map the composed config onto another's


def omegaconf_users(package: Path) -> list[str]:
    """`folder/file.py:line` of every omegaconf import (also inside functions) in the library folders."""
    import ast

    found = []
    for folder in LIBRARIES:
        for path in sorted((package / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                if any(n == "omegaconf" or n.startswith("omegaconf.") for n in names):
                    found.append(f"{folder}/{path.name}:{node.lineno}")
    return found


def test_libraries_take_typed_values_not_the_config(tmp_path):
    """Library modules never see a DictConfig: stages hand them plain values or core.sections' typed views. Only
    the config translators (llm-foundry's config, transformers' TrainingArguments) read the composed config."""
    package = Path(registry.__file__).parents[1]
    assert {u.split(":")[0] for u in omegaconf_users(package)} <= set(CONFIG_TRANSLATORS), omegaconf_users(package)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "bad.py").write_text("def f(cfg):\n    from omegaconf import DictConfig\n")
    assert omegaconf_users(tmp_path) == ["data/bad.py:2"]  # the check sees a lazy import
