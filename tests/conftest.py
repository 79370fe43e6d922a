"""Shared fixtures. Tests run on CPU only; GPU tests carry the `gpu` marker and skip without CUDA."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

# The code under test is this checkout's, whatever checkout the environment's editable install points at
# (several worktrees may share one .venv); child processes (scripts, `python -c`) inherit it through PYTHONPATH.
SOURCE = str(Path(__file__).resolve().parents[1] / "source")
sys.path.insert(0, SOURCE)
os.environ["PYTHONPATH"] = os.pathsep.join([SOURCE, *filter(None, [os.environ.get("PYTHONPATH")])])

# Nothing may be fetched from a model or dataset hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

TESTS_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    skip_gpu_tests(items)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        group_for_xdist(items)


def skip_gpu_tests(items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # torch missing or broken: no GPU tests either way
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------------------------------- xdist groups
# scripts/test.sh runs the suite in 2 pytest-xdist workers (`--dist loadgroup`). Tests that share a fixture
# wider than one test (module, class or session scope, defined under tests/) form one group, run by one
# worker one after another, so the fixture is built once; so do the tests of one explicit
# `@pytest.mark.xdist_group(name)` (for what fixtures do not show: a SLURM cluster, one output root). Every
# other test is scheduled on its own. Groups holding slow tests (markers below) go first, the most first, so no
# long test starts last. Without xdist (`python -m pytest tests/test_x.py`) nothing changes.
#
# pytest-xdist 3.8's own loadgroup marks a group by rewriting `item._nodeid`, which pytest 9 no longer reads
# (node ids are structured): its groups are silently ignored. So the workers write the groups to a file and
# the scheduler below (xdist's LoadScopeScheduling with these groups as its scopes) reads it.
HEAVY_MARKERS = ("slow", "slurm")
if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller names the file; its workers inherit the name
    os.environ["LLM4TRX_XDIST_GROUPS"] = str(Path(tempfile.gettempdir()) / f"llm4trx-xdist-groups-{os.getpid()}.json")


def group_for_xdist(items):
    """Order `items` slow groups first and write {nodeid: group} for the scheduler."""
    parent: dict[str, str] = {}  # union-find: a test, its explicit groups and its shared fixtures are one set

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    links = {item.nodeid: [f"group:{g}" for g in explicit_groups(item)] + shared_fixtures(item) for item in items}
    for item in items:
        for link in links[item.nodeid]:
            parent[find(link)] = find(item.nodeid)
    groups: dict[str, list] = {}
    for item in items:
        if links[item.nodeid]:
            groups.setdefault(find(item.nodeid), []).append(item)
    order = {item.nodeid: n for n, item in enumerate(items)}
    rank = {item.nodeid: (-heavy([item]), n) for n, item in enumerate(items)}  # a test on its own
    names = {}
    for group in groups.values():
        explicit = sorted({name for item in group for name in explicit_groups(item)})
        if len(explicit) > 1:
            raise pytest.UsageError(f"xdist groups {explicit} share a fixture ({group[0].nodeid}): use one name")
        name = explicit[0] if explicit else min(link for item in group for link in links[item.nodeid])
        for item in group:
            names[item.nodeid] = name.split(":", 1)[-1]
            rank[item.nodeid] = (-heavy(group), order[group[0].nodeid])
    items.sort(key=lambda item: (rank[item.nodeid], order[item.nodeid]))
    target = Path(os.environ["LLM4TRX_XDIST_GROUPS"])
    tmp = target.with_name(f"{target.name}.{os.environ['PYTEST_XDIST_WORKER']}")
    tmp.write_text(json.dumps(names))  # every worker collects the same tests: the same file
    os.replace(tmp, target)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        """Whole groups to one worker, in the workers' collection order (slow groups first)."""

        def __init__(self, config, log=None):
            super().__init__(config, log)
            config.option.loadscopereorder = False  # xdist would sort by tests per group instead
            self.groups = None

        def _split_scope(self, nodeid):
            if self.groups is None:  # read once every worker has collected (scheduling starts then)
                self.groups = json.loads(Path(os.environ["LLM4TRX_XDIST_GROUPS"]).read_text())
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


def pytest_unconfigure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        Path(os.environ["LLM4TRX_XDIST_GROUPS"]).unlink(missing_ok=True)


def heavy(items) -> int:
    return sum(any(item.get_closest_marker(m) for m in HEAVY_MARKERS) for item in items)


def explicit_groups(item) -> list[str]:
    return sorted(
        {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    )


def shared_fixtures(item) -> list[str]:
    """One key per fixture instance wider than a test that `item` uses, among the suite's own fixtures."""
    keys = []
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        defs = info.name2fixturedefs.get(name) if info else None
        if not defs or defs[-1].scope == "function":
            continue
        code = getattr(defs[-1].func, "__code__", None)
        if code is None or TESTS_DIR not in Path(code.co_filename).parents:
            continue  # pytest's or a plugin's own (tmp_path_factory, ...)
        where = {
            "session": Path(code.co_filename).stem,
            "package": item.path.parent.name,
            "module": item.path.stem,
            "class": f"{item.path.stem}.{getattr(item.cls, '__name__', '')}",
        }
        keys.append(f"fixture:{where[defs[-1].scope]}.{name}")
    return keys


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def out_root(tmp_path):
    """An empty `paths.output_root` for one test."""
    return tmp_path / "outputs"


@pytest.fixture(scope="session")
def smoke_pretrained(tmp_path_factory):
    """`python -m llm4trx.pretrain experiment=smoke` (in-process) on the fixture inputs: (cfg, checkpoints).
    Defined here, once for the session (a fixture imported into two modules is two fixtures, built twice)."""
    from fixtures_lm import BUCKETED, SMOKE_TEST_SCHEDULE, build_lm_inputs, smoke_cfg

    from llm4trx.pretrain import run

    # Test-sized schedule (the smoke preset itself trains 300 batches of 8): 60 batches of 8, eval every 20.
    # Length-bucketed batches (an opt-in lever): the in-process pretraining tests cover that loader path.
    cfg = smoke_cfg(tmp_path_factory.mktemp("smoke") / "outputs", *SMOKE_TEST_SCHEDULE, *BUCKETED)
    build_lm_inputs(cfg)
    return cfg, run(cfg)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The whole pipeline of two seeds, once per test run (all xdist workers): `run_multi_seed.sh` on the tiny
    smoke configuration, seeds side by side. For tests that only read its output root (or add a seed of their
    own); its output: `.root`, `.stdout`. See pipeline_helpers.smoke_run."""
    from pipeline_helpers import smoke_run as build

    return build(tmp_path_factory)


# --------------------------------------------------------------------------------------------- reporting
FUZZ_OUTCOMES: Counter = Counter()  # the xdist workers' counts, gathered by the controller


def fuzz_outcomes() -> Counter:
    module = sys.modules.get("test_fuzz_prepare")
    return Counter(getattr(module, "OUTCOMES", None) or {})


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # an xdist worker: hand the counts to the controller
        session.config.workeroutput["fuzz_outcomes"] = dict(fuzz_outcomes())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    FUZZ_OUTCOMES.update(getattr(node, "workeroutput", {}).get("fuzz_outcomes", {}))


def pytest_terminal_summary(terminalreporter):
    """How many malformed inputs the fuzz test (test_fuzz_prepare.py) tried, and how they ended."""
    outcomes = fuzz_outcomes() + FUZZ_OUTCOMES
    if outcomes:
        tried = sum(v for k, v in outcomes.items() if k.endswith(": tried"))
        terminalreporter.write_line(
            f"fuzz: prepare tried on {tried} malformed inputs: "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
        )
