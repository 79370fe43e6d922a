"""core/typed.py: a config section is declared once (core/schema.py); the model the libraries get and the checks
made at compose time are the same declaration, and a stage reads the model from its config without converting."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from llm4trx.core import schema
from llm4trx.core.config import compose
from llm4trx.core.sections import AugmentSpec, DatasetSpec, TextSpec
from llm4trx.core.typed import Section, checks_of


def test_the_checked_keys_are_fields_of_the_section_the_libraries_get():
    for key, model in [
        ("splits", schema.SplitsSpec),
        ("dataset", schema.DatasetSpec),
        ("text", schema.TextSpec),
        ("coles", schema.ColesSpec),
        ("validate", schema.Validate),
        ("augment", schema.AugmentSpec),
        ("finetune", schema.FinetuneSpec),
    ]:
        checked = schema.Config.model_fields[key + "_" if key == "validate" else key].annotation
        assert checked is checks_of(model)
        declared = {f.name for f in dataclasses.fields(model)}
        assert {f.alias or n for n, f in checked.model_fields.items()} <= declared, key


def test_a_section_is_read_as_it_is_composed(tmp_path):
    cfg = compose([f"paths.output_root={tmp_path}", "augment=hf", "dataset.n_clients=300", "augment.sampling.n=2"])
    ds = DatasetSpec.from_config(cfg.dataset)
    assert ds.n_clients == 300 and type(ds.n_clients) is int and ds.schema == cfg.dataset.schema
    assert isinstance(ds.signals, dict)  # checked as schema.Signals, read as a plain dict
    augment = AugmentSpec.from_config(cfg.augment)
    assert augment.sampling.n == 2 and isinstance(augment.clients, dict)
    # An absent key takes the code's default; a frozen dataclass, replaced rather than changed.
    text = TextSpec.from_config(OmegaConf.create({"format": "fields"}))
    assert (text.format, text.mcc_descriptions, text.calendar) == ("fields", True, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        text.format = "json"
    assert dataclasses.replace(text, format="json").format == "json"
    assert isinstance(text, Section) and dataclasses.is_dataclass(text)
