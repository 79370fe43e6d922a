"""Mixing augmented texts into the pretraining train split; called by the text stage (config: augment.mix).

The text stage calls, inside its build:

    records, mix_stats = mix_into_train(cfg, train_records, count_tokens)   # stats go to text/stats.json

and passes `keys=[..., *MIX_KEYS]`, `inputs=[..., *mix_inputs(cfg)]` to run_stage, so that changing the mix or
regenerating an augment output rebuilds text/. Only clients of the train split get augmented texts (val and
test clients never do: their records are not passed in, and outputs naming them are counted and skipped).

Records keep the text stage's fields and gain `source`: "base" for the client's own text, or
"augment/<name>/<prompt_id>". Readers that want one text per client (embed) keep `source == "base"`. With
`with_base: false` the chosen clients' base records stay (embed needs them) but carry `pretrain: false`, and
the shards stage leaves them out of the corpus.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from llm4trx.errors import ConfigError, DataError, StageInputMissing
from llm4trx.stage import read_success, require

MIX_KEYS = ["augment.mix"]


def mix_enabled(cfg: DictConfig) -> bool:
    return bool(cfg.get("augment") and cfg.augment.mix.sources)


def mix_inputs(cfg: DictConfig) -> list[str]:
    """Input stages of the text stage due to mixing: augment/ when mixing is on."""
    return ["augment"] if mix_enabled(cfg) else []


def mix_into_train(
    cfg: DictConfig,
    train_records: list[dict[str, Any]],
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(train records with the augmented texts added, statistics of the mix for text/stats.json)."""
    if not mix_enabled(cfg):
        return train_records, {"enabled": False}
    m = cfg.augment.mix
    if not 0 <= m.fraction <= 1:
        raise ConfigError(f"augment.mix.fraction must be in [0, 1], not {m.fraction}")
    folder = require(cfg, "augment")
    outputs = read_success(folder).get("outputs", {})
    splits = pd.read_parquet(require(cfg, "prepare") / "splits.parquet", columns=["client_id", "split"])
    train_ids = set(splits.loc[splits["split"] == "train", "client_id"].astype(str))
    base = {r["client_id"]: r for r in train_records if r["client_id"] in train_ids}
    wanted = set(m.prompts) if m.prompts else None

    texts: dict[str, list[tuple[str, str]]] = {}   # client -> [(source, text)]
    skipped = Counter()
    for name in m.sources:
        if name not in outputs:
            raise StageInputMissing(f"augment.mix.sources names {name!r} but {folder}/{name}.jsonl is not complete "
                                    f"(done: {sorted(outputs)}); run `python -m llm4trx.augment augment.name={name}`")
        path = folder / outputs[name]["file"]
        with open(path) as f:
            for row, line in enumerate(f, start=1):
                try:
                    rec = json.loads(line)
                    cid, pid, text = str(rec["client_id"]), rec["prompt_id"], rec["text"]
                except (json.JSONDecodeError, KeyError) as err:
                    raise DataError(path, f"not an augment record ({err})", row=row) from err
                if wanted is not None and pid not in wanted:
                    continue
                if cid not in base:  # a val/test client, or one unknown to this data: never mixed
                    skipped["not_train"] += 1
                    continue
                texts.setdefault(cid, []).append((f"augment/{name}/{pid}", text))

    candidates = sorted(texts)
    k = int(round(m.fraction * len(candidates)))
    order = np.random.default_rng(int(m.seed)).permutation(len(candidates))
    chosen = {candidates[i] for i in order[:k]}

    records, per_source = [], Counter()
    for rec in train_records:
        cid = rec["client_id"]
        mixed = cid in chosen
        records.append({**rec, "source": "base", **({} if m.with_base or not mixed else {"pretrain": False})})
        for source, text in texts.get(cid, []) if mixed else []:
            per_source[source] += 1
            records.append({"client_id": cid, "text": text, "n_events": rec.get("n_events"),
                            "n_events_kept": rec.get("n_events_kept"),
                            "n_tokens": count_tokens(text) if count_tokens else None, "source": source})
    stats = {
        "enabled": True,
        "sources": {name: outputs[name]["config_hash"] for name in m.sources},
        "prompts": sorted(wanted) if wanted else None,
        "fraction": float(m.fraction), "with_base": bool(m.with_base), "seed": int(m.seed),
        "train_clients": len(train_records),
        "clients_with_augmented": len(candidates), "clients_mixed": len(chosen),
        "texts_added": sum(per_source.values()), "texts_per_source": dict(sorted(per_source.items())),
        "base_texts_out_of_pretraining": 0 if m.with_base else len(chosen),
        "skipped_not_train": skipped["not_train"],
    }
    return records, stats
