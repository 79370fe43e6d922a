"""The CoLES baseline's model and inputs: the published configs value for value, time features, the fast
hard-negative selector against ptls's own."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import ColesSpec

PUBLISHED = json.loads((Path(__file__).parent / "data" / "ptls_published_configs.json").read_text())


def plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize("name", sorted(PUBLISHED["coles"]))
def test_ptls_coles_configs_match_the_published_values(name):
    entry = PUBLISHED["coles"][name]
    assert PUBLISHED["source"]["repository"] == "dllllb/ptls-experiments" and len(PUBLISHED["source"]["commit"]) == 40
    assert all(p.startswith(f"scenario_{name}/") for p in entry["paths"])
    for cfg in (compose([entry["config"], f"dataset={entry['dataset']}"]), compose([f"experiment={entry['preset']}"])):
        assert cfg.dataset.name == entry["dataset"]
        for row in entry["values"]:
            assert plain(OmegaConf.select(cfg, row["key"])) == row["value"], (name, row["key"], row["published"])


@pytest.mark.parametrize("name", sorted(PUBLISHED["aggregates"]))
def test_real_presets_compute_the_published_aggregates(name):
    entry = PUBLISHED["aggregates"][name]
    cfg = compose([f"experiment={entry['preset']}"])
    for row in entry["values"]:
        assert plain(OmegaConf.select(cfg, row["key"])) == row["value"], (name, row["key"], row["published"])
    # every categorical column the published encoder aggregates is one our data has
    assert set(cfg.validate.aggregates.categorical) <= {"mcc", *cfg.dataset.categorical}


def test_published_rosbank_model_is_built_as_configured():
    from ptls.frames.coles.losses import ContrastiveLoss

    from llm4trx.evaluation.coles_model import FastHardNegativePairSelector, build_module, build_seq_encoder

    c = ColesSpec.from_config(compose(["coles=ptls_rosbank", "dataset=rosbank"]).coles)
    sizes = {"mcc": 300, "channel_type": 7, "currency": 5, "trx_category": 12}  # fitted sizes: `in` wins
    encoder = build_seq_encoder(c, sizes)
    trx = encoder.trx_encoder
    assert {k: (e.num_embeddings, e.embedding_dim) for k, e in trx.embeddings.items()} == {
        "mcc": (100, 24),
        "channel_type": (4, 4),
        "currency": (4, 4),
        "trx_category": (10, 4),
    }
    assert {k: type(v).__name__ for k, v in trx.custom_embeddings.items()} == {"amount": "LogScaler"}
    assert type(trx.custom_embedding_batch_norm).__name__ == "RBatchNormWithLens"  # use_batch_norm_with_lens
    assert trx.embeddings["mcc"].scale == pytest.approx(0.0003) and trx.embeddings["mcc"].max_norm is None
    rnn = encoder.seq_encoder.rnn
    assert isinstance(rnn, torch.nn.LSTM) and rnn.hidden_size == 1024 and not rnn.bidirectional
    module = build_module(c, encoder)
    assert [type(m).__name__ for m in module._head.model] == ["L2NormEncoder"]  # use_norm_encoder, nothing else
    assert isinstance(module._loss, ContrastiveLoss) and module._loss.margin == 0.5
    assert (
        isinstance(module._loss.pair_selector, FastHardNegativePairSelector)
        and module._loss.pair_selector.neg_count == 5
    )
    [optimizer], [scheduler] = module.configure_optimizers()
    assert type(optimizer).__name__ == "Adam" and optimizer.defaults["lr"] == 0.004
    assert optimizer.defaults["weight_decay"] == 0.0
    assert (scheduler.step_size, scheduler.gamma) == (10, 0.9025)


def test_datamodule_applies_dropout_and_slices():
    from ptls.data_load.datasets import AugmentationDataset

    from llm4trx.evaluation.coles_model import build_datamodule

    records = [
        {"client_id": str(i), "event_time": torch.arange(100), "mcc": torch.arange(100) % 7 + 1} for i in range(4)
    ]
    c = ColesSpec.from_config(compose(["coles=ptls_gender", "dataset=gender", "coles.trx_dropout=0.5"]).coles)
    data = build_datamodule(c, records)
    dataset = data.train_dataloader().dataset
    assert isinstance(dataset.data, AugmentationDataset)
    slices = dataset[0]
    assert len(slices) == 5 and all(15 <= len(s["event_time"]) <= 51 for s in slices)  # dropout 0.5: 51 left


def test_time_features_from_event_time():
    from llm4trx.data.sequences import numeric_time_columns, time_feature_columns

    events = pd.DataFrame(
        {
            "client_id": ["a", "a", "a", "a", "b", "b"],
            "event_time": pd.to_datetime(
                [
                    "2019-01-01 10:00",
                    "2019-01-01 22:30",
                    "2019-01-04 09:00",
                    "2019-02-20 00:00",
                    "2019-01-02 13:00",
                    "2019-01-09 13:00",
                ]
            ),
        }
    )
    out = time_feature_columns(events, ["day_gap", "hour", "weekday", "day_index"], "2018-12-31")
    assert list(out.columns) == ["day_gap", "hour", "weekday", "day_index"]
    # gaps: first event 0; 0.52 d -> bin 1 (<1 d); 2.44 d -> bin 3 ([2, 3)); 47 d -> bin 8 (33+); b: 7 d -> [5, 9)
    assert out["day_gap"].tolist() == [0, 1, 3, 8, 0, 5]
    assert out["hour"].tolist() == [10, 22, 9, 0, 13, 13]
    assert out["weekday"].tolist() == [1, 1, 4, 2, 2, 2]  # 2019-01-01 was a Tuesday
    assert out["day_index"].tolist() == [1, 1, 4, 51, 2, 9]
    assert time_feature_columns(events, ["day_index"])["day_index"].tolist() == [0, 0, 3, 50, 1, 8]  # data's first day
    numeric = numeric_time_columns(events, ["day_gap", "hour", "day_index"], "2018-12-31")
    assert numeric["day_gap"].round(4).tolist() == [0.0, 0.5208, 2.4375, 46.625, 0.0, 7.0]
    assert numeric["hour"].tolist() == [10.0, 22.5, 9.0, 0.0, 13.0, 13.0]
    assert numeric["day_index"].round(4).tolist() == [1.4167, 1.9375, 4.375, 51.0, 2.5417, 9.5417]
    # An unknown name never gets here: coles.time_features / time_numeric are checked at compose (test_schema.py).


def test_time_features_reach_the_records_as_categories():
    from llm4trx.data.sequences import ptls_records
    from llm4trx.evaluation.coles_model import embedding_specs, numeric_inputs

    events = pd.DataFrame(
        {
            "client_id": ["a"] * 3 + ["b"] * 2,
            "event_time": pd.to_datetime(
                ["2019-01-01 10:00", "2019-01-02 10:00", "2019-01-03 11:00", "2019-01-01 10:00", "2019-01-01 12:00"]
            ),
            "mcc": [5411, 5411, 6011, 5411, 4829],
            "amount": [1.0, 2.0, 3.0, 4.0, 5.0],
        }
    )
    records, sizes = ptls_records(events, ["mcc"], ["amount"], ["a", "b"], time_features=["hour", "day_index"])
    assert set(sizes) == {"mcc", "hour", "day_index"}
    assert set(records[0]) >= {"hour", "day_index", "mcc", "amount", "event_time"}
    # frequency codes: hour 10 (3 times) is code 1; day 0 (3 times) is code 1
    assert records[0]["hour"].tolist() == [1, 1, 2] and records[0]["day_index"].tolist() == [1, 2, 3]
    c = ColesSpec(embeddings={"hour": {"in": 30, "out": 4}}, category_embedding_dim=16)
    assert embedding_specs(c, sizes)["hour"] == {"in": 30, "out": 4}
    assert embedding_specs(c, sizes)["mcc"] == {"in": sizes["mcc"], "out": sizes["mcc"]}
    with pytest.raises(ConfigError, match=r"coles.embeddings: \['weekday'\] not among the CoLES columns"):
        embedding_specs(ColesSpec(embeddings={"weekday": {"in": 8, "out": 4}}, category_embedding_dim=16), sizes)
    records, _ = ptls_records(events, ["mcc"], ["amount"], ["a", "b"], time_numeric=["day_index"])
    assert records[0]["day_index"].tolist() == pytest.approx([10 / 24, 1 + 10 / 24, 2 + 11 / 24])
    c = ColesSpec(numeric={"amount": "log"}, time_numeric=["day_gap", "day_index"])
    assert numeric_inputs(c) == {"amount": "log", "day_gap": "log", "day_index": "identity"}
    with pytest.raises(ConfigError, match="coles.time_features: \\['mcc'\\] is also a data column"):
        ptls_records(events.assign(hour=1), ["mcc"], ["amount"], ["a"], time_features=["mcc"])


@pytest.mark.parametrize("n_clients,dim", [(64, 64), (96, 32)])
def test_fast_selector_gives_ptls_pairs_and_loss(n_clients, dim):
    from ptls.frames.coles.losses import ContrastiveLoss
    from ptls.frames.coles.sampling_strategies import HardNegativePairSelector

    from llm4trx.evaluation.coles_model import FastHardNegativePairSelector

    g = torch.Generator().manual_seed(n_clients)
    labels = torch.arange(n_clients).repeat_interleave(5)  # 5 slices per client, as ColesDataset
    centers = torch.randn(n_clients, dim, generator=g)
    embeddings = centers[labels] + 0.7 * torch.randn(len(labels), dim, generator=g)
    embeddings = embeddings / embeddings.norm(dim=1, keepdim=True)  # the normalised head
    reference, fast = HardNegativePairSelector(neg_count=5), FastHardNegativePairSelector(neg_count=5)
    pos_ref, neg_ref = reference.get_pairs(embeddings, labels)
    pos, neg = fast.get_pairs(embeddings, labels)
    assert torch.equal(pos, pos_ref)
    assert torch.equal(neg, neg_ref)
    loss_ref = ContrastiveLoss(margin=0.5, sampling_strategy=reference)(embeddings, labels)
    loss = ContrastiveLoss(margin=0.5, sampling_strategy=fast)(embeddings, labels)
    assert loss.item() == pytest.approx(loss_ref.item(), rel=1e-6)
    assert loss.item() > 0  # a real batch, not a degenerate one


def _slices_batch(sizes: dict, lengths: list[int], time_numeric) -> object:
    """A padded batch of transaction rows of the given lengths on the rosbank schema."""
    from ptls.data_load.utils import collate_feature_dict

    g = torch.Generator().manual_seed(1)
    return collate_feature_dict(
        [
            {
                **{k: torch.randint(1, s, (n,), generator=g) for k, s in sizes.items()},
                "amount": torch.rand(n, generator=g) * 1000,
                "event_time": torch.arange(n),
                **{f: torch.rand(n, generator=g) * 30 for f in time_numeric},
            }
            for n in lengths
        ]
    )


@pytest.mark.parametrize("encoder_type,starter", [("gru", "static"), ("gru", "none"), ("lstm", "static")])
def test_length_grouped_rnn_gives_ptls_embeddings_loss_and_gradients(encoder_type, starter):
    from ptls.frames.coles.losses import ContrastiveLoss
    from ptls.nn import RnnSeqEncoder

    from llm4trx.evaluation.coles_model import FastHardNegativePairSelector, build_seq_encoder, build_trx_encoder

    c = ColesSpec.from_config(
        compose(["experiment=smoke", f"coles.encoder_type={encoder_type}", f"coles.trainable_starter={starter}"]).coles
    )
    sizes = {"mcc": 60, "channel_type": 7, "currency": 4, "trx_category": 4}
    encoders = {}
    for groups in (1, 3):
        torch.manual_seed(0)
        encoders[groups] = build_seq_encoder(c, sizes, groups=groups)
    torch.manual_seed(0)
    reference = RnnSeqEncoder(  # ptls's own class, built as build_seq_encoder builds its parts
        trx_encoder=build_trx_encoder(c, sizes),
        hidden_size=c.hidden_size,
        type=encoder_type,
        bidir=False,
        trainable_starter=starter,
    )
    state = reference.state_dict()
    for encoder in encoders.values():  # the same modules in the same order: a seed gives the same weights
        assert state.keys() == encoder.state_dict().keys()
        assert all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())

    lengths = [15, 60, 33, 17, 60, 41, 28, 59, 15, 22, 48, 36]  # 6 clients x 2 slices, in no order
    labels = torch.arange(6).repeat_interleave(2)
    loss = ContrastiveLoss(margin=0.5, sampling_strategy=FastHardNegativePairSelector(neg_count=3))
    results = {}
    for name, encoder in [("ptls", reference), *encoders.items()]:
        encoder.train()
        torch.manual_seed(7)  # the TrxEncoder's embedding noise
        emb = encoder(_slices_batch(sizes, lengths, c.time_numeric))
        out = loss(torch.nn.functional.normalize(emb), labels)
        encoder.zero_grad()
        out.backward()
        grads = {k: p.grad.clone() for k, p in encoder.named_parameters() if p.grad is not None}
        results[name] = (emb.detach(), out.detach(), grads)
    emb0, loss0, grads0 = results["ptls"]
    assert loss0 > 0
    for name in (1, 3):
        emb, out, grads = results[name]
        torch.testing.assert_close(emb, emb0, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out, loss0, rtol=1e-5, atol=1e-6)
        assert grads.keys() == grads0.keys() and "seq_encoder.rnn.weight_hh_l0" in grads
        for k in grads0:
            torch.testing.assert_close(grads[k], grads0[k], rtol=1e-4, atol=1e-6)


def test_length_grouped_rnn_runs_each_group_only_to_its_longest_row(monkeypatch):
    from llm4trx.evaluation.coles_model import build_seq_encoder

    c = ColesSpec.from_config(compose(["experiment=smoke"]).coles)
    sizes = {"mcc": 60, "channel_type": 7, "currency": 4, "trx_category": 4}
    encoder = build_seq_encoder(c, sizes, groups=2)
    steps = []
    rnn_forward = encoder.seq_encoder.rnn.forward
    monkeypatch.setattr(
        encoder.seq_encoder.rnn, "forward", lambda x, h=None: steps.append(x.shape) or rnn_forward(x, h)
    )
    encoder.eval()
    encoder(_slices_batch(sizes, [50, 10, 12, 48, 11, 49], c.time_numeric))
    assert [tuple(s[:2]) for s in steps] == [(3, 12), (3, 50)]
    steps.clear()
    encoder.seq_encoder.is_reduce_sequence = False  # sequence outputs: ptls's own path, one padded run
    encoder(_slices_batch(sizes, [50, 10, 12], c.time_numeric))
    assert [tuple(s[:2]) for s in steps] == [(3, 50)]


def test_inference_returns_rows_in_record_order():
    from ptls.data_load.utils import collate_feature_dict

    from llm4trx.evaluation.coles_model import build_seq_encoder, infer

    c = ColesSpec.from_config(compose(["experiment=smoke"]).coles)
    sizes = {"mcc": 60, "channel_type": 7, "currency": 4, "trx_category": 4}
    encoder = build_seq_encoder(c, sizes)
    batch = _slices_batch(sizes, [40, 5, 77, 12, 5, 63, 30], c.time_numeric)
    records = [{k: v[i, : batch.seq_lens[i]] for k, v in batch.payload.items()} for i in range(len(batch.seq_lens))]
    matrix = infer(encoder, records, batch_size=3)
    encoder.eval()
    with torch.no_grad():
        one_by_one = torch.cat([encoder(collate_feature_dict([r])) for r in records]).numpy()
    assert matrix.shape == (7, c.hidden_size)
    assert abs(matrix - one_by_one).max() < 1e-5
    tail = infer(encoder, records, batch_size=4, max_len=20)  # the last 20 transactions of each
    with torch.no_grad():
        expected = encoder(collate_feature_dict([{k: v[-20:] for k, v in records[2].items()}])).numpy()
    assert abs(tail[2] - expected[0]).max() < 1e-5
