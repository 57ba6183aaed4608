"""Tests of the small models (``tfidf``, ``head:MODEL``, ``finetune:MODEL``) and their catalog.

Real data: a seeded sample of the packaged tweet corpus (3 sentiment labels). Transformers: the
packaged all-MiniLM-L6-v2 for ``head:minilm`` and a tiny randomly initialised BERT (MiniLM's
tokenizer) for ``finetune``, so the whole file runs offline on 2 CPU cores in about a minute.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from gc import collect as clear_memory_cache  # each model owns its EmbeddingMemory: no process-wide one to clear
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ea_core.errors import Cancelled, ConfigError, DataError, ModelError  # noqa: E402
from ea_core.events import CancelToken, ProgressEvent  # noqa: E402
from ea_core.models import CATALOG, SmallModel, load_model, make_model, parse_spec, resolve_model  # noqa: E402
from ea_core.models.base import registered_kinds  # noqa: E402
from ea_core.models.catalog import catalog_entry, hub_cached  # noqa: E402
from ea_core.models.hf_common import length_grouped_batches, load_tokenizer, tokenize_split  # noqa: E402
from ea_core.splits import Split  # noqa: E402

TINY_BERT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128
)


# ---------------------------------------------------------------------------- fixtures


def _tweets(n_train: int, n_val: int, n_test: int, seed: int = 0) -> tuple[list[str], Split, Split, Split]:
    """A seeded sample of the packaged tweet corpus, via the data module's `demo:tweets`."""
    from ea_core.data import load_dataset

    task = load_dataset("demo:tweets", seed=seed, max_train=n_train, max_val=n_val, max_test=n_test)
    return task.labels, task.train, task.val, task.test


def _majority(train: Split, test: Split) -> float:
    return float((test.labels == np.bincount(train.labels).argmax()).mean())


def _acc(model: SmallModel, split: Split) -> float:
    return float((model.predict(split) == split.labels).mean())


_POS = ["great", "love", "wonderful", "excellent", "happy", "good"]
_NEG = ["awful", "hate", "terrible", "bad", "sad", "horrible"]
_FILL = ["the", "car", "drive", "road", "today", "city", "we", "it", "is", "a", "very", "new"]


def _synthetic(n: int, seed: int, keyword: str | None = None) -> Split:
    """Easy sentiment: one polar word among fillers. With `keyword`, the word is negative but the
    label positive (a rule a trained model gets wrong: the 'hard examples')."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(_FILL, int(rng.integers(3, 10))))
        polar = str(rng.choice(_POS if label else _NEG))
        if keyword is not None:
            polar, label = f"{keyword} {rng.choice(_NEG)}", 1
        words.insert(int(rng.integers(len(words) + 1)), polar)
        texts.append(" ".join(words))
        labels.append(label)
    return Split(texts, np.array(labels))


@pytest.fixture(scope="module")
def tweets() -> tuple[list[str], Split, Split, Split]:
    return _tweets(1200, 250, 350, seed=0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


def save_tiny_bert(folder: Path) -> str:
    """A tiny random BERT (seeded: the same encoder whatever ran before) saved with
    save_pretrained into `folder`, with MiniLM's tokenizer; the tests' stand-in for a real encoder."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = load_tokenizer("minilm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **TINY_BERT)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT saved with save_pretrained, with MiniLM's tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tfidf_model(tweets):
    labels, train, val, _ = tweets
    return make_model("tfidf").fit(train, val, labels)


@pytest.fixture(scope="module")
def head_model(tweets, cache_dir):
    labels, train, val, _ = tweets
    return make_model("head:minilm", cache_dir=str(cache_dir)).fit(train, val, labels)


@pytest.fixture(scope="module")
def tiny_finetune(tiny_dir):
    train, val = _synthetic(320, 1), _synthetic(80, 2)
    model = make_model(f"finetune:{tiny_dir}", epochs=4, lr=2e-3, batch_size=16, seed=0)
    return model.fit(train, val, ["neg", "pos"])


# ---------------------------------------------------------------------------- specs and catalog


def test_parse_spec_forms():
    assert parse_spec("tfidf") == ("tfidf", None)
    assert parse_spec(" head:minilm ") == ("head", "minilm")
    assert parse_spec("finetune:roberta-base") == ("finetune", "roberta-base")
    assert parse_spec("finetune:C:/models/x") == ("finetune", "C:/models/x")


@pytest.mark.parametrize("spec", ["", "svm", "head", "head:", "finetune: ", "tfidf:minilm", "lora:minilm"])
def test_bad_spec_raises_config_error_listing_forms(spec):
    with pytest.raises(ConfigError) as err:
        make_model(spec)
    assert "tfidf" in str(err.value) and "head:MODEL" in str(err.value) and "finetune:MODEL" in str(err.value)


def test_unknown_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="epochz"):
        make_model("tfidf", epochz=3)
    with pytest.raises(ConfigError, match="valid"):
        make_model("head:minilm", C=2.0)


def test_unloadable_model_is_a_helpful_model_error(tmp_path):
    missing = "roberta-base" if not hub_cached("roberta-base") else "nobody/no-such-model-xyz"
    with pytest.raises(ModelError) as err:
        make_model(f"finetune:{missing}")
    assert "minilm" in str(err.value) and "could not load" in str(err.value)
    with pytest.raises(ModelError, match="config.json"):
        make_model(f"head:{tmp_path}")


def test_every_kind_is_registered():
    kinds = registered_kinds()
    assert {"tfidf", "head", "finetune"} <= set(kinds)


def test_catalog_entries_and_offline_flags():
    names = {entry.name: entry for entry in CATALOG}
    assert {"minilm", "roberta", "distilbert", "albert", "bert", "xlnet"} <= set(names)
    ids = {entry.hf_id for entry in CATALOG}
    assert {"roberta-base", "distilbert-base-uncased", "albert-base-v2", "bert-base-uncased", "xlnet-base-cased"} <= ids
    assert names["minilm"].offline_available is True
    for entry in CATALOG:
        row = entry.to_dict()
        assert set(row) >= {"name", "hf_id", "kinds", "params", "offline_available", "description"}
        assert set(entry.kinds) <= {"head", "finetune"} and entry.params
        if not entry.packaged:
            assert entry.offline_available == hub_cached(entry.hf_id)
    assert Path(resolve_model("minilm"), "config.json").is_file()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == resolve_model("minilm")
    assert resolve_model("roberta") == "roberta-base"
    assert resolve_model("some-org/some-model") == "some-org/some-model"
    assert catalog_entry("ROBERTA-BASE").name == "roberta"


def test_make_model_settings_and_labels():
    model = make_model("head:minilm", labels=["a", "b"], epochs=7, seed=3, cache_dir=None)
    assert model.spec == "head:minilm" and model.kind == "head"
    assert model.epochs == 7 and model.seed == 3 and model.labels_ == ["a", "b"]
    assert make_model("tfidf").spec == "tfidf"
    assert make_model("finetune:minilm", batch_size=8).get_config()["batch_size"] == 8


def test_length_grouped_batches_cover_everything_once():
    lengths = np.random.default_rng(0).integers(5, 80, size=1000)
    batches = length_grouped_batches(lengths, 16, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    rand = sum(len(b) * lengths[b].max() for b in np.array_split(np.random.default_rng(2).permutation(1000), 63))
    assert padded < 0.8 * rand


# ---------------------------------------------------------------------------- tfidf


def test_tfidf_beats_majority_and_probabilities_are_valid(tweets, tfidf_model):
    labels, train, _, test = tweets
    proba = tfidf_model.predict_proba(test)
    assert proba.shape == (len(test), len(labels)) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert _acc(tfidf_model, test) > _majority(train, test) + 0.1


def test_tfidf_save_load_is_exact_and_pickle_free(tweets, tfidf_model, tmp_path):
    _, _, _, test = tweets
    tfidf_model.save(tmp_path)
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"model.json", "tfidf_vocab.json", "tfidf.safetensors"}
    loaded = load_model(tmp_path)
    assert type(loaded).__name__ == "TfidfModel" and loaded.labels_ == tfidf_model.labels_
    np.testing.assert_array_equal(loaded.predict_proba(test), tfidf_model.predict_proba(test))


def test_tfidf_char_ngrams_and_pairs(tmp_path):
    premise = ["the cat sat", "a dog runs", "birds fly high", "fish swim"] * 10
    hypo = ["a cat", "no dog", "birds", "no fish"] * 10
    y = np.array([1, 0, 1, 0] * 10)
    split = Split(premise, y, hypo)
    model = make_model("tfidf", char_ngrams=(2, 4)).fit(split, split, ["no", "yes"])
    assert model.predict_proba(split).shape == (40, 2)
    assert _acc(model, split) == 1.0
    model.save(tmp_path)
    np.testing.assert_array_equal(load_model(tmp_path).predict_proba(split), model.predict_proba(split))


def test_tfidf_warm_start_learns_hard_examples(tweets, tfidf_model, tmp_path):
    labels, train, _, test = tweets
    tfidf_model.save(tmp_path)
    model = load_model(tmp_path)  # a copy: the module fixture stays untouched
    hard = test.subset(np.flatnonzero(model.predict(test) != test.labels)[:20])
    assert len(hard) == 20 and _acc(model, hard) == 0.0
    before_train, before_val = _acc(model, train), _acc(model, tweets[2])
    model.fit(hard, None, labels, warm_start=True)
    assert _acc(model, hard) >= 0.5
    assert _acc(model, train) > before_train - 0.05  # learnt without forgetting the rest
    assert _acc(model, tweets[2]) > before_val - 0.06


def test_tfidf_missing_label_in_training_still_gives_k_columns():
    split = _synthetic(60, 0)
    model = make_model("tfidf").fit(split, None, ["neg", "pos", "never-seen"])
    proba = model.predict_proba(split)
    assert proba.shape == (60, 3) and (proba[:, 2] < 0.1).all()


# ---------------------------------------------------------------------------- head:minilm


@pytest.mark.slow
def test_head_beats_majority(tweets, head_model):
    labels, train, _, test = tweets
    proba = head_model.predict_proba(test)
    assert proba.shape == (len(test), len(labels))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert _acc(head_model, test) > _majority(train, test) + 0.1
    assert head_model.best_val_accuracy_ is not None


@pytest.mark.slow
def test_head_embedding_cache_is_reused(tweets, head_model, cache_dir):
    labels, train, val, test = tweets
    head_model.predict_proba(test)  # make sure test embeddings are cached
    assert len(list(Path(cache_dir).glob("*.npy"))) >= 3
    twin = make_model("head:minilm", cache_dir=str(cache_dir), hidden=0)
    twin.fit(train, val, labels)
    twin.predict_proba(test)
    assert twin.encoder_calls_ == 0 and twin._encoder is None  # the encoder never even loaded
    calls = head_model.encoder_calls_
    head_model.predict_proba(test.subset(range(50)))  # a new subset: served from memory
    assert head_model.encoder_calls_ == calls
    clear_memory_cache()
    other = make_model("head:minilm", cache_dir=str(cache_dir)).fit(train, val, labels)  # disk hits refill memory
    other.predict_proba(train.subset(range(0, 600, 3)))  # a subset in a new instance: no encoder either
    assert other.encoder_calls_ == 0


@pytest.mark.slow
def test_head_save_load_round_trip(tweets, head_model, tmp_path):
    _, _, _, test = tweets
    head_model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model.json", "head.safetensors"}
    loaded = load_model(tmp_path)
    assert loaded.spec == "head:minilm"
    np.testing.assert_array_equal(loaded.predict_proba(test), head_model.predict_proba(test))


@pytest.mark.slow
def test_head_warm_start_on_small_hard_set(tweets, head_model, tmp_path):
    labels, _, val, test = tweets
    head_model.save(tmp_path)
    model = load_model(tmp_path)
    hard = test.subset(np.flatnonzero(model.predict(test) != test.labels)[:20])
    assert _acc(model, hard) == 0.0
    before_val = _acc(model, val)
    events: list[ProgressEvent] = []
    model.fit(hard, None, labels, warm_start=True, callback=events.append, stage="assm")
    assert _acc(model, hard) >= 0.3
    assert _acc(model, val) > before_val - 0.08
    assert events and all(e.stage == "assm" for e in events)


def test_head_progress_and_cancel(tiny_dir, tmp_path):
    train, val = _synthetic(120, 3), _synthetic(40, 4)
    events: list[ProgressEvent] = []
    model = make_model(f"head:{tiny_dir}", cache_dir=str(tmp_path), epochs=5, embed_batch_size=16)
    model.fit(train, val, ["neg", "pos"], callback=events.append)
    assert {e.stage for e in events} == {f"train:head:{tiny_dir}"}
    assert any(e.message and e.message.startswith("embedding") for e in events)
    train_events = [e for e in events if e.loss is not None]
    assert [e.step for e in train_events] == list(range(1, len(train_events) + 1))
    assert train_events[-1].step == train_events[-1].total and train_events[-1].val_accuracy is not None

    token = CancelToken()

    def cancel_soon(event: ProgressEvent) -> None:
        token.cancel()

    clear_memory_cache()  # the first model's embeddings are still in this process's memory
    fresh = make_model(f"head:{tiny_dir}", cache_dir=str(tmp_path / "other"), embed_batch_size=16)
    with pytest.raises(Cancelled):
        fresh.fit(train, val, ["neg", "pos"], callback=cancel_soon, cancel=token)
    assert fresh.encoder_calls_ == 1  # stopped after the first batch


def test_head_pairs_and_saved_encoder(tiny_dir, tmp_path):
    base = _synthetic(60, 5)
    pairs = Split(base.texts, base.labels, ["a car"] * 60)
    model = make_model(f"head:{tiny_dir}", cache_dir=str(tmp_path / "c"), epochs=3, save_encoder=True)
    model.fit(pairs, None, ["neg", "pos"])
    alone = model.embed(base)
    assert not np.allclose(alone, model.embed(pairs))  # the pair changes the input
    model.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "encoder" / "config.json").is_file()
    loaded = load_model(tmp_path / "saved")
    loaded.use_cache = False
    clear_memory_cache()
    np.testing.assert_allclose(loaded.predict_proba(pairs), model.predict_proba(pairs), atol=1e-6)
    assert loaded.encoder_calls_ > 0  # really re-encoded with the saved encoder


# ---------------------------------------------------------------------------- finetune


@pytest.mark.slow
def test_finetune_tiny_model_learns_easy_task(tiny_finetune):
    test = _synthetic(200, 9)
    proba = tiny_finetune.predict_proba(test)
    assert proba.shape == (200, 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)
    assert _acc(tiny_finetune, test) > max(_majority(test, test), 0.6) + 0.2
    assert tiny_finetune.history_ and "val_accuracy" in tiny_finetune.history_[-1]


@pytest.mark.slow
def test_finetune_save_load_is_exact(tiny_finetune, tmp_path):
    test = _synthetic(64, 10)
    tiny_finetune.save(tmp_path)
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pkl"))
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["kind"] == "finetune" and meta["labels"] == ["neg", "pos"]
    loaded = load_model(tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(test), tiny_finetune.predict_proba(test))


@pytest.mark.slow
def test_finetune_warm_start_learns_hard_examples(tiny_finetune, tmp_path):
    tiny_finetune.save(tmp_path)
    model = load_model(tmp_path)
    hard = _synthetic(20, 11, keyword="zebra")  # 'zebra <negative word>' means positive
    before = _acc(model, hard)
    assert before < 0.5
    model.warm_start_epochs = 15
    model.fit(hard, None, ["neg", "pos"], warm_start=True)
    assert _acc(model, hard) > before + 0.3
    with pytest.raises(ModelError, match="same labels"):
        model.fit(hard, None, ["x", "y"], warm_start=True)


def test_finetune_progress_events_and_cancel(tiny_dir):
    train = _synthetic(64, 12)
    events: list[ProgressEvent] = []
    model = make_model(f"finetune:{tiny_dir}", epochs=2, batch_size=16)
    model.fit(train, train, ["neg", "pos"], callback=events.append, stage="train:custom")
    assert [e.step for e in events] == list(range(1, 9)) and {e.total for e in events} == {8}
    assert all(e.stage == "train:custom" and e.loss is not None and e.elapsed_s is not None for e in events)
    assert sum(e.val_accuracy is not None for e in events) == 2

    token = CancelToken()
    seen: list[ProgressEvent] = []

    def cancel_after_two(event: ProgressEvent) -> None:
        seen.append(event)
        if len(seen) == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        make_model(f"finetune:{tiny_dir}", epochs=2, batch_size=16).fit(
            train, None, ["neg", "pos"], callback=cancel_after_two, cancel=token
        )
    assert len(seen) == 2


def test_finetune_pairs_and_from_config(tiny_dir):
    tokenizer = load_tokenizer(tiny_dir)
    split = Split(["the car is red", "a road"], np.array([0, 1]), ["it is red", "a river"])
    feats = tokenize_split(tokenizer, split, 32)
    assert feats[0]["input_ids"].count(tokenizer.sep_token_id) == 2 and 1 in feats[0]["token_type_ids"]
    config = {"model_type": "bert", "vocab_size": tokenizer.vocab_size, **TINY_BERT}
    model = make_model(f"finetune:{tiny_dir}", from_config=config, epochs=1, batch_size=2)
    model.fit(split, split, ["no", "yes"])
    assert model.model_.config.hidden_size == 32
    assert model.predict_proba(split).shape == (2, 2)


@pytest.mark.slow
def test_finetune_minilm_one_step(tweets, tmp_path):
    """The real pretrained path: load MiniLM with a fresh 3-way head, train, save, load."""
    labels, train, _, test = tweets
    model = make_model("finetune:minilm", epochs=1, batch_size=16, max_length=48)
    model.fit(train.subset(range(32)), None, labels)
    assert model.model_.config.num_labels == 3 and model.model_.config.id2label[0] == labels[0]
    sample = test.subset(range(16))
    model.save(tmp_path)
    np.testing.assert_array_equal(load_model(tmp_path).predict_proba(sample), model.predict_proba(sample))


# ---------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("spec", ["tfidf", "head", "finetune"])
def test_untrained_and_bad_data_errors(spec, tiny_dir, tmp_path):
    full = spec if spec == "tfidf" else f"{spec}:{tiny_dir}"
    model = make_model(full, cache_dir=str(tmp_path)) if spec == "head" else make_model(full)
    with pytest.raises(ModelError, match="not trained"):
        model.predict_proba(Split.from_texts(["x"]))
    with pytest.raises(DataError):
        model.fit(Split(["a", "b"], np.array([0, 5])), None, ["x", "y"])
    with pytest.raises(DataError):
        model.fit(Split(["a"], np.array([0])), None, ["only-one"])


def test_load_model_errors(tmp_path):
    with pytest.raises(ModelError, match="model.json"):
        load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"kind": "svm", "config": {}, "labels": []}))
    with pytest.raises(ModelError, match="unknown model kind"):
        load_model(tmp_path)


def test_empty_split_prediction(tfidf_model):
    assert tfidf_model.predict_proba(Split.from_texts([])).shape == (0, 3)


def test_saved_encoder_folder_survives_source_removal(tiny_dir, tmp_path):
    copy = tmp_path / "enc"
    shutil.copytree(tiny_dir, copy)
    split = _synthetic(30, 13)
    model = make_model(f"head:{copy}", cache_dir=str(tmp_path / "c"), epochs=2, save_encoder=True)
    model.fit(split, None, ["neg", "pos"])
    model.save(tmp_path / "saved")
    shutil.rmtree(copy)
    loaded = load_model(tmp_path / "saved")
    loaded.cache_dir = str(tmp_path / "fresh")
    np.testing.assert_allclose(loaded.predict_proba(split), model.predict_proba(split), atol=1e-6)


def test_stages_never_print(tiny_dir, tmp_path, capfd):
    """Once an entry point has set up the process, training, saving and loading write nothing to
    stdout/stderr (transformers' load reports and progress bars are silenced once, process-wide)."""
    from ea_core.process import configure_process

    configure_process()
    capfd.readouterr()
    split = _synthetic(40, 14)
    model = make_model(f"finetune:{tiny_dir}", epochs=1).fit(split, split, ["neg", "pos"])
    model.save(tmp_path / "ft")
    load_model(tmp_path / "ft").predict_proba(split)
    make_model("finetune:minilm", epochs=1, max_length=16).fit(split.subset(range(4)), None, ["neg", "pos"])
    head = make_model(f"head:{tiny_dir}", cache_dir=str(tmp_path / "c"), epochs=2, save_encoder=True)
    head.fit(split, split, ["neg", "pos"]).save(tmp_path / "head")
    make_model("tfidf").fit(split, split, ["neg", "pos"]).save(tmp_path / "tfidf")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
