"""The declared choice and range checks (llm4trx.core.schema): every one fails at compose time with one line
naming its key and what the value may be; unknown keys stay accepted where they were; the names spelt in the
schema are those of the code's own tables."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from pipeline_helpers import child_env
from omegaconf import OmegaConf

from llm4trx.core import check, schema
from llm4trx.core.check import compose_checked
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError

AUGMENT, FINETUNE = ["augment=hf"], ["finetune=default"]
# (overrides, the key named, what the line says after `key=value: `) for every declared check.
BAD = [
    (["parallel_seeds=0"], "parallel_seeds", "should be greater than or equal to 1 (seeds run at once)"),
    (["max_seq_len=2"], "max_seq_len", "should be greater than or equal to 3 (bos + a token + eos)"),
    (["shards.samples_per_part=0"], "shards.samples_per_part", "should be greater than or equal to 1"),
    (["splits.test_fraction=1.0"], "splits.test_fraction", "should be less than 1"),
    (["splits.val_fraction=-0.1"], "splits.val_fraction", "should be greater than or equal to 0"),
    (["splits.n_folds=1"], "splits.n_folds", "should be greater than or equal to 2"),
    (["dataset.schema=visa"], "dataset.schema", "should be 'rosbank', 'age_pred' or 'gender'"),
    (["dataset=rosbank", "dataset.loader=visa"], "dataset.loader", "should be 'age_pred', 'gender', 'generic' or"),
    (["dataset.n_clients=5"], "dataset.n_clients", "should be greater than or equal to 10"),
    (["dataset.min_events=1"], "dataset.min_events", "should be greater than or equal to 2"),
    (["+dataset.signals.periodc=1"], "dataset.signals.periodc", "unknown key; known: mcc_mix, amount, trend, order,"),
    (["dataset.signals.trend=strong"], "dataset.signals.trend", "should be a valid number"),
    (["dataset=rosbank", "dataset.metrics=[auroc,f1]"], "dataset.metrics[1]", "should be 'accuracy' or 'auroc'"),
    (["text.format=csv"], "text.format", "should be 'compact', 'fields', 'flat', 'grouped_mcc', 'html', 'json', "),
    (["text.max_tokens=2"], "text.max_tokens", "should be greater than 2 (bos + eos + text, or null)"),
    (["text.chunk_events=0"], "text.chunk_events", "should be greater than or equal to 1"),
    (
        ["text=fields", "text.calendar=[dow,weekday]"],
        "text.calendar[1]",
        "should be 'dow', 'dom', 'month', 'end' or 'same'",
    ),
    (["tokenizer.kind=sentencepiece"], "tokenizer.kind", "should be 'domain_bpe', 'fields' or 'pretrained'"),
    (["embed.pooling=median"], "embed.pooling", "should be 'mean', 'last', 'max' or 'mean_max'"),
    (["embed.padding_side=middle"], "embed.padding_side", "should be 'left' or 'right'"),
    (["embed.dtype=fp8"], "embed.dtype", "should be 'float32', 'bfloat16' or 'float16'"),
    (["embed.layer_slice=[-1]"], "embed.layer_slice", "should be a list with at least 2 items, not 1 ([start, stop]"),
    (["embed.batch_size=0"], "embed.batch_size", "should be greater than or equal to 1"),
    (["embed.segments=0"], "embed.segments", "should be greater than or equal to 1"),
    (["coles.encoder_type=transformer"], "coles.encoder_type", "should be 'gru' or 'lstm'"),
    (["coles.time_features=[month]"], "coles.time_features[0]", "should be 'day_gap', 'hour', 'weekday' or 'day_"),
    (["coles.time_numeric=[hour,month]"], "coles.time_numeric[1]", "should be 'day_gap', 'hour', 'weekday' or 'day_"),
    (["validate.feature_sets=[llm,bert]"], "validate.feature_sets[1]", "should be 'llm', 'aggregates', 'coles', "),
    (["validate.lightgbm_seed=seed"], "validate.lightgbm_seed", "should be 'fixed' or 'run' (fixed: lightgbm.common"),
    (["validate.head=svm"], "validate.head", "should be 'lightgbm' or 'logistic' (the downstream model: lightgbm"),
    (["validate.logistic.Cs=0"], "validate.logistic.Cs", "should be greater than or equal to 1 (how many C values"),
    (["validate.logistic.cv=1"], "validate.logistic.cv", "should be greater than or equal to 2 (inner stratified"),
    (["validate.logistic.max_iter=0"], "validate.logistic.max_iter", "should be greater than or equal to 1"),
    (["validate.random_dim=0"], "validate.random_dim", "should be greater than or equal to 1 (the random floor's"),
    (["trainer.backend=deepspeed"], "trainer.backend", "should be 'foundry' or 'hf'"),
    (["trainer.device=cuda"], "trainer.device", "should be 'cpu' or 'gpu'"),
    (["trainer.loggers=[wandb,comet]"], "trainer.loggers[1]", "should be 'wandb', 'mlflow' or 'tensorboard'"),
    (["trainer.bucket_window=0"], "trainer.bucket_window", "should be greater than or equal to 1 (batches sorted"),
    (["trainer.packing=sometimes"], "trainer.packing", "should be a valid boolean"),
    (["trainer.length_bucketing=maybe"], "trainer.length_bucketing", "should be a valid boolean"),
    (["trainer.contrastive.weight=-1"], "trainer.contrastive.weight", "should be greater than or equal to 0 (0: off)"),
    (["trainer.contrastive.views=1"], "trainer.contrastive.views", "should be greater than or equal to 2"),
    (["trainer.contrastive.min_fraction=0"], "trainer.contrastive.min_fraction", "should be greater than 0"),
    (["trainer.contrastive.max_fraction=1.5"], "trainer.contrastive.max_fraction", "should be less than or equal to 1"),
    (["trainer.contrastive.temperature=0"], "trainer.contrastive.temperature", "should be greater than 0"),
    ([*AUGMENT, "augment.backend=tgi"], "augment.backend", "should be 'hf' or 'vllm'"),
    ([*AUGMENT, "augment.dtype=fp8"], "augment.dtype", "should be 'auto', 'float32', 'bfloat16' or 'float16'"),
    ([*AUGMENT, "augment.use_chat_template=maybe"], "augment.use_chat_template", "should be 'auto', True, False, "),
    ([*AUGMENT, "augment.transactions_format=csv"], "augment.transactions_format", "should be 'compact', 'fields'"),
    ([*AUGMENT, "augment.batch_size=0"], "augment.batch_size", "should be greater than or equal to 1"),
    ([*AUGMENT, "augment.clients.fraction=0"], "augment.clients.fraction", "should be greater than 0"),
    ([*AUGMENT, "augment.sampling.n=0"], "augment.sampling.n", "should be greater than or equal to 1"),
    ([*AUGMENT, "augment.sampling.max_tokens=0"], "augment.sampling.max_tokens", "should be greater than or equal"),
    ([*AUGMENT, "augment.mix.fraction=1.5"], "augment.mix.fraction", "should be less than or equal to 1"),
    ([*FINETUNE, "finetune.runs=[]"], "finetune.runs", "should be a list with at least 1 item, not 0 (keys of fine"),
    ([*FINETUNE, "finetune.methods.head.kind=probe"], "finetune.methods.head.kind", "should be 'head' or 'verbal"),
    ([*FINETUNE, "finetune.pooling=median"], "finetune.pooling", "should be 'mean', 'last', 'max' or 'mean_max'"),
    ([*FINETUNE, "finetune.training.precision=fp16"], "finetune.training.precision", "should be 'fp32' or 'bf16'"),
    ([*FINETUNE, "finetune.training.device=tpu"], "finetune.training.device", "should be 'auto', 'cpu' or 'cuda'"),
    *[
        ([*FINETUNE, f"finetune.training.{key}=0"], f"finetune.training.{key}", "should be greater than or equal to 1")
        for key in ("max_steps", "batch_size", "micro_batch_size", "eval_batch_size", "eval_interval", "patience")
    ],
    (
        [*FINETUNE, "finetune.verbalizer.unknown_words=skip"],
        "finetune.verbalizer.unknown_words",
        "should be 'vocabulary' or 'error'",
    ),
    (["engine.name=dask"], "engine.name", "should be 'embedded' or 'spark'"),
    (["report.bootstrap.n=0"], "report.bootstrap.n", "should be greater than or equal to 1"),
    (["report.bootstrap.level=1.5"], "report.bootstrap.level", "should be less than 1"),
    (["report.bootstrap.seeds=pooled"], "report.bootstrap.seeds", "should be 'resample' or 'fixed'"),
]


def declared_keys(model: type[schema.Group], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        inner = field.annotation
        if typing.get_origin(inner) is dict:
            keys |= declared_keys(typing.get_args(inner)[1], key + ".*.")
        elif isinstance(inner, type) and issubclass(inner, schema.Group):
            keys |= declared_keys(inner, key + ".") if inner.model_config.get("extra") != "forbid" else {key + ".*"}
        else:
            keys.add(key)
    return keys


def test_every_declared_check_has_a_bad_value_here():
    tried = set()
    for _, key, _ in BAD:
        parts = key.split("[")[0].split(".")
        tried.add(".".join(parts))
        tried.add(".".join(parts[:-1] + ["*"]))  # a closed group's unknown key
        tried.add(".".join(parts[:2] + ["*"] + parts[3:]))  # finetune.methods.<run>.kind
    assert declared_keys(schema.Config) <= tried, declared_keys(schema.Config) - tried


@pytest.mark.parametrize(("overrides", "key", "says"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_value_fails_at_compose_time_naming_the_key(tmp_path, overrides, key, says):
    with pytest.raises(ConfigError) as err:
        compose([f"paths.output_root={tmp_path}", *overrides])
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{key}=" if "unknown key" not in says else f"{key}: "), line
    assert says in line, line


def test_the_front_door_prints_the_same_one_line(capsys, tmp_path):
    assert check.main([f"paths.output_root={tmp_path}", "embed.pooling=median"]) == 2
    assert capsys.readouterr().err == "error: embed.pooling='median': should be 'mean', 'last', 'max' or 'mean_max'\n"


def test_a_stage_composed_by_hydra_itself_checks_too(tmp_path):
    """With a Hydra flag (-m: a sweep, possibly on SLURM) the overrides go to Hydra unchecked; the stage's entry
    point checks the config Hydra composed, before the stage runs."""
    argv = ["-m", "llm4trx.validate", "-m", f"paths.output_root={tmp_path}", "validate.lightgbm_seed=seed"]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=child_env(), timeout=120)
    assert "error: validate.lightgbm_seed='seed': should be 'fixed' or 'run'" in done.stderr, done.stderr
    assert not (tmp_path / "default").exists() or not list((tmp_path / "default").rglob("_SUCCESS.json"))


def test_good_values_and_unknown_keys_pass(tmp_path):
    cfg = compose(
        [
            f"paths.output_root={tmp_path}",
            *AUGMENT,
            *FINETUNE,
            "text.max_tokens=null",  # null: no budget
            "embed.layer_slice=[null,-2]",
            "augment.use_chat_template=false",
            "+trainer.new_loss=infonce",  # groups stay open: a new key needs no schema edit
            "+model.pooling_head=2",
            "dataset.signals.periodic=0.5",  # the closed group takes its known keys
        ]
    )
    checked = schema.validate(cfg)
    assert checked.embed.layer_slice == [None, -2] and checked.augment.use_chat_template is False
    assert checked.dataset.signals.periodic == 0.5 and checked.text.max_tokens is None
    # Missing (???) and unresolvable values are left to core.check (its own line), not reported here.
    custom = compose(["dataset=custom", "tokenizer=pretrained"])
    assert "dataset.raw_dir" in OmegaConf.missing_keys(custom)
    compose(["text.max_tokens=${nowhere}"])
    with pytest.raises(ConfigError, match="config value 'text.max_tokens' cannot be resolved"):
        compose_checked(["text.max_tokens=${nowhere}"])


def same(declared, implemented, name: str) -> None:
    assert set(declared) == set(implemented), f"core/schema.py {name}: make it {sorted(implemented)}"


def test_the_schema_spells_the_names_of_the_code():
    from llm4trx.data import sequences, synthetic
    from llm4trx.data.loaders import LOADERS
    from llm4trx.evaluation.protocol import HEADS, METRICS
    from llm4trx.lm.pooling import POOLINGS
    from llm4trx.render import formats
    from llm4trx.validate import BASE_SETS

    same(schema.FORMATS, formats.FORMATS, "FORMATS")
    same(schema.CALENDAR, formats.CALENDAR, "CALENDAR")
    same(schema.LOADERS, LOADERS, "LOADERS")
    same(schema.METRICS, METRICS, "METRICS")
    same(schema.HEADS, HEADS, "HEADS")
    same(schema.SCHEMAS, synthetic.SCHEMAS, "SCHEMAS")
    same(schema.TIME_FEATURES, sequences.TIME_FEATURES, "TIME_FEATURES")
    same(schema.Signals.model_fields, synthetic.SIGNALS + synthetic.EXTRA_SIGNALS, "Signals")
    same(schema.POOLINGS, POOLINGS, "POOLINGS")
    same(schema.FEATURE_SETS, BASE_SETS, "FEATURE_SETS")


def test_the_schema_spells_the_names_of_the_torch_side():
    pytest.importorskip("torch")
    from llm4trx.generation.backends import BACKENDS
    from llm4trx.lm.dtypes import DTYPES

    same(schema.DTYPES, DTYPES, "DTYPES")
    same(schema.AUGMENT_BACKENDS, BACKENDS, "AUGMENT_BACKENDS")
