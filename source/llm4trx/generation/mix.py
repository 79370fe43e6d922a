"""Mixing augmented texts into the pretraining train split; called by the text stage (config: augment.mix).

The text stage calls, inside its build:

    train, stats["augmented"] = mix_into_train(mix, train, train_ids, augmented, counter.count)  # text/stats.json

with `mix` the augment.mix section (core.sections.MixSpec; None while not mixing), `train_ids` the clients of the
train split and `augmented` the augment stage's folder and the outputs its _SUCCESS.json records (the stage reads
them; this module reads only the files named there).

The stage registry (llm4trx.core.registry) adds `augment.mix` to the text stage's hash and augment/ to its
inputs while mixing is on, so that changing the mix or regenerating an augment output rebuilds text/. Only clients of the train split get augmented texts (val and
test clients never do: their rows are not passed in, and outputs naming them are counted and skipped).

Rows keep the text stage's fields and gain `source`: "base" for the client's own text, or
"augment/<name>/<prompt_id>". Readers that want one text per client (embed) keep `source == "base"`. With
`with_base: false` the chosen clients' base records stay (embed needs them) but carry `pretrain: false`, and
the shards stage leaves them out of the corpus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from llm4trx.core.sections import MixSpec
from llm4trx.core.errors import DataError, StageInputMissing


def mix_into_train(
    mix: MixSpec | None,
    train: pd.DataFrame,
    train_ids: set[str],
    augmented: tuple[Path, dict[str, Any]] | None,
    count_tokens: Callable[[list[str]], Sequence[int]] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(train texts with the augmented ones added, statistics of the mix for text/stats.json).

    `train`: the text stage's train rows (client_id, text, n_events, n_events_kept, n_tokens); `train_ids`: the
    clients of the train split; `augmented`: (the augment stage's folder, the outputs of its _SUCCESS.json),
    needed only while mixing; `count_tokens`: the text stage's token counter (a batch of texts -> counts) for the
    added rows' n_tokens.
    """
    if mix is None:
        return train, {"enabled": False}
    m = mix  # fraction in [0, 1]: core/schema.py
    folder, outputs = augmented
    train_ids = {str(c) for c in train_ids}
    base = train.assign(client_id=train["client_id"].astype(str))
    base_ids = set(base["client_id"]) & train_ids
    wanted = set(m.prompts) if m.prompts else None

    rows: list[tuple[str, str, str]] = []  # (client_id, source, text)
    skipped = 0
    for name in m.sources:
        if name not in outputs:
            raise StageInputMissing(
                f"augment.mix.sources names {name!r} but {folder}/{name}.jsonl is not complete "
                f"(done: {sorted(outputs)}); run `python -m llm4trx.augment augment.name={name}`"
            )
        path = folder / outputs[name]["file"]
        with open(path, encoding="utf-8") as f:
            for row, line in enumerate(f, start=1):
                try:
                    rec = json.loads(line)
                    cid, pid, text = str(rec["client_id"]), rec["prompt_id"], rec["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise DataError(path, f"not an augment record ({err})", row=row) from err
                if wanted is not None and pid not in wanted:
                    continue
                if cid not in base_ids:  # a val/test client, or one unknown to this data: never mixed
                    skipped += 1
                    continue
                rows.append((cid, f"augment/{name}/{pid}", text))

    candidates = sorted({cid for cid, _, _ in rows})
    k = int(round(m.fraction * len(candidates)))
    order = np.random.default_rng(int(m.seed)).permutation(len(candidates))
    chosen = {candidates[i] for i in order[:k]}
    added = pd.DataFrame([r for r in rows if r[0] in chosen], columns=["client_id", "source", "text"])
    per_client = base.drop_duplicates("client_id").set_index("client_id")
    added["n_events"] = per_client["n_events"].reindex(added["client_id"]).to_numpy()
    added["n_events_kept"] = per_client["n_events_kept"].reindex(added["client_id"]).to_numpy()
    added["n_tokens"] = (
        np.asarray(count_tokens(added["text"].tolist()), np.int64) if count_tokens is not None and len(added) else None
    )
    base["source"] = "base"
    if not m.with_base:
        base["pretrain"] = ~base["client_id"].isin(chosen)
        added["pretrain"] = True
    mixed = pd.concat([base, added], ignore_index=True)
    stats = {
        "enabled": True,
        "sources": {name: outputs[name]["config_hash"] for name in m.sources},
        "prompts": sorted(wanted) if wanted else None,
        "fraction": float(m.fraction),
        "with_base": bool(m.with_base),
        "seed": int(m.seed),
        "train_clients": int(base["client_id"].nunique()),
        "clients_with_augmented": len(candidates),
        "clients_mixed": len(chosen),
        "texts_added": int(len(added)),
        "texts_per_source": {k: int(v) for k, v in added["source"].value_counts().sort_index().items()},
        "tokens_added": int(added["n_tokens"].sum()) if count_tokens is not None and len(added) else None,
        "base_texts_out_of_pretraining": 0 if m.with_base else len(chosen),
        "skipped_not_train": skipped,
    }
    return mixed, stats
