"""The stage registry: every stage of the pipeline described once.

For each stage: its entry-point module (`python -m llm4trx.<name>`), its folder in the run directory, where
that folder lives (`shared` by every seed of an experiment, per `seed`, or per `experiment`), the stages whose
outputs it reads, and the config sections its hash covers. A hash covers each listed section *whole*, minus
the few operational keys named in `operational` (threads, workers, micro-batches, trackers, console): a new
key that changes results can therefore never reuse stale outputs. `stage_dir`, the pipeline scripts
(`llm4trx.core.check`), the report and the tests all read this table.

Each stage also lists the files it writes (`writes`: name, path in its folder, format, and the module that owns
the file: its one reader and one writer, with the contract checks). File names are spelt here only; the owner
gets its path with `file(stage, name)` and everyone else calls the owner (tests/test_artifacts.py checks both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

SHARED, SEED, EXPERIMENT, RAW = "shared", "seed", "experiment", "raw"


def _always(cfg: DictConfig) -> bool:
    return True


@dataclass(frozen=True)
class Input:
    """An input stage, read only when `when(cfg)` holds (e.g. augment/ only when mixing is on)."""

    stage: str
    when: Callable[[DictConfig], bool] = _always


@dataclass(frozen=True)
class Artifact:
    """A file a stage writes. `path` is relative to the stage's folder; a `{field}` in it (text's `{split}`) is
    filled in by `file(stage, name, field=...)`."""

    name: str
    path: str
    format: str  # parquet | jsonl | json | md | csv
    owner: str  # the module holding its reader and writer (the only caller of `file()` for it)


def owned_by(owner: str, **paths: str) -> tuple[Artifact, ...]:
    """The artifacts `name=path` whose reader and writer live in module `owner`; each one's format is its
    path's extension."""
    return tuple(Artifact(name, path, path.rsplit(".", 1)[-1], owner) for name, path in paths.items())


# Written by every stage with a run-directory folder (llm4trx.core.stage.write_success).
SUCCESS = Artifact("success", "_SUCCESS.json", "json", "llm4trx.core.stage")


@dataclass(frozen=True)
class Stage:
    name: str
    folder: str
    scope: str  # SHARED | SEED | EXPERIMENT | RAW (dataset.raw_dir itself, outside the run directory)
    inputs: tuple[Input, ...] = ()
    sections: tuple[str, ...] = ()  # config sections (dotted paths) hashed whole
    operational: tuple[str, ...] = ()  # dotted keys inside `sections` left out of the hash
    extra_sections: Callable[[DictConfig], list[str]] = field(default=lambda cfg: [])  # sections due to options
    in_pipeline: bool = True  # run by scripts/run.sh (report runs once over the seeds, after run.sh)
    when: Callable[[DictConfig], bool] = _always  # optional stages: part of the pipeline only when chosen
    summary: str = ""
    # How "finished" is judged when the stage writes no _SUCCESS.json (RAW scope): a cheap predicate.
    done: Callable[[DictConfig], bool] | None = None
    # Identities of inputs outside the run directory (a model dir given by path), hashed with the sections.
    external: Callable[[DictConfig], dict] = field(default=lambda cfg: {})
    writes: tuple[Artifact, ...] = ()  # its files besides _SUCCESS.json (model files in library formats aside)


# ------------------------------------------------------------------------------------------ conditions


def augment_configured(cfg: DictConfig) -> bool:
    augment = cfg.get("augment")
    return OmegaConf.is_dict(augment) and bool(augment) and augment.get("enabled", True) is not False


def downloadable(cfg: DictConfig) -> bool:
    """A real dataset with a public source (`dataset.download`) and a file missing from raw_dir."""
    return bool(cfg.dataset.get("download")) and not raw_files_present(cfg)


def raw_files_present(cfg: DictConfig) -> bool:
    from pathlib import Path

    raw = Path(cfg.dataset.raw_dir)
    return all((raw / str(item.file)).is_file() for item in cfg.dataset.download.files)


def mixing(cfg: DictConfig) -> bool:
    """Augmented texts are mixed into text/train.jsonl (an augment config with augment.mix.sources)."""
    return bool(augment_configured(cfg) and cfg.augment.get("mix") and cfg.augment.mix.sources)


def finetune_configured(cfg: DictConfig) -> bool:
    """A finetune config is chosen (`finetune=default`, experiment=smoke_finetune) and not switched off."""
    finetune = cfg.get("finetune")
    return OmegaConf.is_dict(finetune) and bool(finetune) and finetune.get("enabled", True) is not False


def finetune_from_export(cfg: DictConfig) -> bool:
    """Fine-tuning starts from this run's exported hf/ (no finetune.model given)."""
    return finetune_configured(cfg) and not cfg.finetune.get("model")


def applies_model(cfg: DictConfig) -> bool:
    """embed.model is set: embed applies that model (another run's hf/, a local HF checkpoint), not this run's."""
    return bool(cfg.embed.get("model"))


def own_model(cfg: DictConfig) -> bool:
    """This run trains and exports its own LM: embed uses it, or fine-tuning starts from it."""
    return not applies_model(cfg) or finetune_from_export(cfg)


def applied_model_identity(cfg: DictConfig) -> dict:
    """The applied model's identity (its export's hash, else its files' sizes and times): a model retrained in
    place under the same path rebuilds embed."""
    if not applies_model(cfg):
        return {}
    from llm4trx.core.model_identity import model_fingerprint  # here: that module reads SUCCESS from this one

    model = Path(str(cfg.embed.model))
    return {"model": model_fingerprint(model) if model.is_dir() else "missing"}


def contrastive_on(cfg: DictConfig) -> bool:
    """Pretraining adds the contrastive term (trainer.contrastive.weight > 0)."""
    weight = OmegaConf.select(cfg, "trainer.contrastive.weight", default=0)
    return isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0


def domain_tokenizer(cfg: DictConfig) -> bool:
    return cfg.tokenizer.kind in ("domain_bpe", "fields")


def feature_sets_used(cfg: DictConfig) -> set[str]:
    """Base feature sets that validate needs: listed ones and the parts of every concatenation."""
    v = cfg.validate
    used = set(v.feature_sets)
    for name in v.get("concatenations") or []:
        used.update(name.split("+"))
    return used


def shared_baselines(cfg: DictConfig) -> bool:
    """The seed-independent feature sets (aggregates; oracle on generated data; random at a given width) are
    built and validated once per dataset by the `baselines` stage: LightGBM's seed is fixed
    (validate.lightgbm_seed=fixed) and one is used."""
    used = feature_sets_used(cfg)
    oracle = "oracle" in used and cfg.dataset.get("generator") == "synthetic"
    random = "random" in used and cfg.validate.get("random_dim") is not None
    return cfg.validate.get("lightgbm_seed", "fixed") == "fixed" and ("aggregates" in used or oracle or random)


def validates(name: str) -> Callable[[DictConfig], bool]:
    return lambda cfg: name in feature_sets_used(cfg)


# ------------------------------------------------------------------------------------------ the stages

# What the downstream protocol's results depend on besides the features: the folds, the task and its metrics, and
# the columns that name clients and categories (baselines and validate run the same protocol).
PROTOCOL_SECTIONS = (
    "splits.n_folds",
    "dataset.task",
    "dataset.n_classes",
    "dataset.metrics",
    "dataset.id_column",
    "dataset.categorical",
)
# The protocol's outputs, written by baselines and validate alike (llm4trx.data.results reads and writes them).
VALIDATION_RESULTS = owned_by(
    "llm4trx.data.results", results="results.json", table="results.md", predictions="predictions.parquet"
)

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        # Writes raw_dir, not a run-directory folder: no hash, no _SUCCESS.json; done when the files are there
        # (they are verified against dataset.download's sizes and checksums when fetched; see llm4trx.data.fetch).
        Stage(
            "download",
            "",
            RAW,
            when=downloadable,
            done=raw_files_present,
            summary="a real dataset's public files -> dataset.raw_dir (only when missing)",
            writes=owned_by("llm4trx.data.fetch", manifest="_DOWNLOAD.json"),
        ),
        # The `engine` section (embedded | spark, conf/engine/) is in no hash: both engines write the same
        # prepare and text outputs (tests/test_spark.py), so switching engines reuses finished stages. Only the
        # layout of data/events.parquet differs (a file, or a directory of sorted parts), and every reader takes both.
        Stage(
            "prepare",
            "data",
            SHARED,
            sections=("dataset", "splits"),
            summary="raw files -> canonical events, targets, splits",
            writes=(
                *owned_by("llm4trx.data.chunks", events="events.parquet"),
                *owned_by("llm4trx.data.splits", targets="targets.parquet", splits="splits.parquet"),
            ),
        ),
        # augment.mix is read by the text stage, not by augment: changing the mix must not regenerate.
        Stage(
            "augment",
            "augment",
            SHARED,
            inputs=(Input("prepare"),),
            sections=("augment", "dataset", "text"),
            operational=("augment.mix", "augment.cpu_threads", "text.chunk_events"),
            when=augment_configured,
            summary="a generator LM rewrites clients' histories (optional)",
        ),
        Stage(
            "text",
            "text",
            SHARED,
            inputs=(Input("prepare"), Input("augment", mixing)),
            sections=("text", "dataset"),
            # chunk_events: how many events are rendered at once (memory); every client is whole in one chunk and
            # its text depends only on its events and the dataset-level context, so the outputs do not depend on it.
            operational=("text.chunk_events",),
            extra_sections=lambda cfg: ["augment.mix"] if mixing(cfg) else [],
            summary="events -> one text per client",
            writes=owned_by("llm4trx.data.text_files", texts="{split}.jsonl", stats="stats.json"),
        ),
        # tokenizer .. export run only for a run that uses its own LM (embed.model unset, or fine-tuning from hf/).
        Stage(
            "tokenizer",
            "tokenizer",
            SHARED,
            inputs=(Input("text", domain_tokenizer),),
            sections=("tokenizer",),
            when=own_model,
            summary="domain BPE trained on train texts, or a local pretrained tokenizer",
        ),
        # shards.workers: processes encoding the parts; the parts (shards.samples_per_part) fix the layout.
        Stage(
            "shards",
            "mds",
            SHARED,
            inputs=(Input("text"), Input("tokenizer")),
            sections=("max_seq_len", "shards"),
            operational=("shards.workers",),
            when=own_model,
            summary="texts -> pre-tokenized MDS shards",
            writes=owned_by("llm4trx.shards", stats="stats.json"),
        ),
        Stage(
            "pretrain",
            "checkpoints",
            SEED,
            inputs=(Input("tokenizer"), Input("shards")),
            sections=("model", "max_seq_len", "seed", "trainer"),
            operational=(
                "trainer.device_train_microbatch_size",
                "trainer.device_eval_batch_size",
                "trainer.num_workers",
                "trainer.cpu_threads",
                "trainer.console_log_interval",
                "trainer.dist_timeout",
                "trainer.loggers",
                "trainer.logger_settings",
                "trainer.save_num_checkpoints_to_keep",
            ),
            # The contrastive term pools its views as embed pools: those keys then change the trained model.
            extra_sections=lambda cfg: ["embed.pooling", "embed.layer_slice"] if contrastive_on(cfg) else [],
            when=own_model,
            summary="next-token pretraining (llm-foundry + Composer)",
            writes=(
                *owned_by("llm4trx.data.curves", metrics="metrics.jsonl"),
                *owned_by("llm4trx.pretrain", run="_RUN.json"),
            ),
        ),
        Stage(
            "export",
            "hf",
            SEED,
            inputs=(Input("pretrain"),),
            sections=("export",),
            operational=("export.verify_batch_size",),
            when=own_model,
            summary="Composer checkpoint -> HF directory",
        ),
        # embed.model=DIR applies another model (no export input); embed.incremental only decides whether rows of
        # the previous embeddings are reused (they are equal to recomputed ones up to float summation order).
        Stage(
            "embed",
            "embeddings",
            SEED,
            inputs=(Input("text"), Input("export", lambda cfg: not applies_model(cfg))),
            sections=("embed", "dataset.id_column"),
            operational=("embed.incremental",),
            external=applied_model_identity,
            summary="one pooled vector per client",
            writes=owned_by(
                "llm4trx.data.embeddings", embeddings="embeddings.parquet", text_hashes="text_hashes.parquet"
            ),
        ),
        Stage(
            "finetune",
            "finetune",
            SEED,
            inputs=(Input("prepare"), Input("text"), Input("export", finetune_from_export)),
            sections=("finetune", "seed", "max_seq_len", "splits.n_folds", "dataset.n_classes", "dataset.metrics"),
            operational=(
                "finetune.training.eval_batch_size",
                "finetune.training.cpu_threads",
                "finetune.training.num_workers",
                "finetune.training.gradient_checkpointing",
            ),
            when=finetune_configured,
            summary="supervised fine-tuning on the target, per fold (optional)",
            writes=(
                *owned_by("llm4trx.data.results", predictions="predictions.parquet"),
                *owned_by("llm4trx.data.curves", curves="curves.json"),
            ),
        ),
        Stage(
            "coles",
            "coles",
            SEED,
            inputs=(Input("prepare"),),
            sections=("coles", "seed", "dataset.id_column", "dataset.categorical", "dataset.time_origin"),
            operational=("coles.num_workers", "coles.inference_batch_size"),
            when=validates("coles"),
            summary="the CoLES baseline (ptls)",
            writes=(
                *owned_by("llm4trx.data.embeddings", embeddings="embeddings.parquet"),
                *owned_by("llm4trx.data.curves", losses="losses.jsonl"),
            ),
        ),
        # aggregates, oracle (and random at a given width) under the protocol, once for every seed (with
        # validate.lightgbm_seed=run they depend on the seed and validate builds them itself). Its folder holds their
        # features, results and predictions. Only validate reads it, so it comes right before validate;
        # run_multi_seed.sh still builds it with the other shared stages before starting the seeds.
        Stage(
            "baselines",
            "baselines",
            SHARED,
            inputs=(Input("prepare"),),
            sections=(
                "validate.aggregates",
                "validate.head",
                "validate.lightgbm",
                "validate.lightgbm_seed",
                "validate.logistic",
                "validate.random_dim",
                *PROTOCOL_SECTIONS,
            ),
            when=shared_baselines,
            summary="the seed-independent feature sets (aggregates, oracle, random), validated once",
            writes=(*VALIDATION_RESULTS, *owned_by("llm4trx.data.embeddings", features="{name}.parquet")),
        ),
        Stage(
            "validate",
            "validation",
            SEED,
            inputs=(
                Input("prepare"),
                Input("baselines", shared_baselines),
                Input("embed", validates("llm")),
                Input("coles", validates("coles")),
                Input("finetune", finetune_configured),
            ),
            sections=(
                "validate",
                "seed",
                *PROTOCOL_SECTIONS,
            ),
            operational=("validate.n_jobs",),
            summary="feature sets under the ptls protocol",
            writes=VALIDATION_RESULTS,
        ),
        Stage(
            "report",
            "report",
            EXPERIMENT,
            in_pipeline=False,
            summary="tables and plots over seeds",
            writes=owned_by("llm4trx.report", report="report.md", tables="report.json"),
        ),
    )
}


def get(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; stages: {', '.join(STAGES)}") from None


def artifact(stage: str, name: str) -> Artifact:
    if name == SUCCESS.name:
        return SUCCESS
    for a in get(stage).writes:
        if a.name == name:
            return a
    raise KeyError(f"stage {stage!r} writes no {name!r}; it writes: {', '.join(a.name for a in get(stage).writes)}")


def file(stage: str, name: str, /, **fields: str) -> str:
    """The path of `stage`'s artifact `name` inside the stage's folder (for the artifact's owner module); `fields`
    fill the path's `{field}`s."""
    path = artifact(stage, name).path
    return path.format(**fields) if fields else path


def pipeline(cfg: DictConfig) -> list[str]:
    """The stages `scripts/run.sh` runs for this config, in order."""
    return [s.name for s in STAGES.values() if s.in_pipeline and s.when(cfg)]


def inputs_of(cfg: DictConfig, name: str) -> list[str]:
    return [i.stage for i in get(name).inputs if i.when(cfg)]


def hashed_sections(cfg: DictConfig, name: str) -> list[str]:
    stage = get(name)
    return list(stage.sections) + list(stage.extra_sections(cfg))
