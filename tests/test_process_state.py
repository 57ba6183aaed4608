"""Two runs or two predictions at once in one process: no shared mutable state breaks them.

The embedding memory is locked and bounded, LM capabilities belong to each provider, models never
touch torch's thread count, and training leaves torch's global random state as it found it. The
transformer models here are a tiny random BERT (MiniLM's tokenizer), so the file runs offline in
seconds.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from ea_core.errors import ConfigError
from ea_core.models import make_model
from ea_core.models.memory import EmbeddingMemory
from ea_core.process import configure_process
from ea_core.splits import Split
from tests.scripted_server import LABELS, ScriptedServer, make_inputs, provider_for
from tests.test_models import _synthetic, save_tiny_bert

# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random BERT saved with save_pretrained, with MiniLM's tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert_state"))


def _run_in_threads(*targets: Callable[[], None]) -> None:
    """Run every target in its own thread, all released at once; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> None:
        try:
            start.wait()
            target()
        except BaseException as exc:  # noqa: BLE001  (reported below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]


def _head(tiny_dir: str, memory: EmbeddingMemory, **settings: Any) -> Any:
    model = make_model(f"head:{tiny_dir}", use_cache=False, embed_batch_size=8, **settings)
    model.memory = memory
    return model


# ---------------------------------------------------------------------------- embedding memory


def test_embedding_memory_is_lru_and_bounded() -> None:
    memory = EmbeddingMemory(max_vectors=2)
    a, b, c = ("a", None), ("b", None), ("c", "pair")
    memory.put_many("enc", {a: np.ones(3), b: np.full(3, 2.0)})
    assert set(memory.get_many("enc", [a, b, c])) == {a, b}
    memory.get_many("enc", [a])  # a is now the most recently used
    memory.put_many("enc", {c: np.zeros(3)})
    assert len(memory) == 2 and set(memory.get_many("enc", [a, b, c])) == {a, c}
    assert memory.get_many("other-encoder", [a, c]) == {}  # spaces never mix
    rows = np.arange(12.0).reshape(4, 3)
    memory.put_many("enc", {("r", None): rows[1]})
    stored = memory.get_many("enc", [("r", None)])[("r", None)]
    assert stored.base is None and stored.tolist() == [3.0, 4.0, 5.0]  # a copy, not a view of `rows`


@pytest.mark.parametrize("one_model", [False, True], ids=["two-models", "one-model"])
def test_two_threads_embedding_overlapping_texts_get_right_vectors(tiny_dir: str, one_model: bool) -> None:
    texts = _synthetic(90, 21).texts
    split = Split(texts, np.zeros(len(texts), dtype=int))
    expected = dict(zip(texts, _head(tiny_dir, EmbeddingMemory(0)).embed(split)))  # no memory at all
    memory = EmbeddingMemory(max_vectors=10)  # far fewer than each call needs: constant eviction
    shared = _head(tiny_dir, memory)
    sizes: list[int] = []

    def work(offset: int) -> Callable[[], None]:
        def run() -> None:
            model = shared if one_model else _head(tiny_dir, memory)
            for r in range(6):
                start = (offset + 11 * r) % 50
                part = texts[start : start + 40]  # overlaps the other thread's texts
                got = model.embed(Split(part, np.zeros(len(part), dtype=int)))
                np.testing.assert_allclose(got, np.stack([expected[t] for t in part]), atol=1e-5)
                sizes.append(len(memory))

        return run

    _run_in_threads(work(0), work(5))
    assert sizes and max(sizes) <= 10 and len(memory) <= 10


def test_second_model_on_same_encoder_skips_known_texts(tiny_dir: str) -> None:
    """Another fold / a warm start on a subset of the same texts runs no encoder pass (no disk
    cache here: the shared memory alone serves them); texts evicted since are encoded again."""
    memory = EmbeddingMemory()
    train, val = _synthetic(120, 22), _synthetic(40, 23)
    first = _head(tiny_dir, memory, epochs=2).fit(train, val, ["neg", "pos"])
    assert first.encoder_calls_ > 0
    fold = _head(tiny_dir, memory, epochs=2).fit(train.subset(range(0, 120, 2)), val, ["neg", "pos"])
    fold.predict_proba(train.subset(range(1, 120, 2)))
    assert fold.encoder_calls_ == 0

    small = EmbeddingMemory(max_vectors=50)
    _head(tiny_dir, small).embed(train)
    again = _head(tiny_dir, small)
    np.testing.assert_allclose(again.embed(train), first.embed(train), atol=1e-5)
    assert again.encoder_calls_ > 0 and len(small) == 50


# ---------------------------------------------------------------------------- LM capabilities


def test_two_providers_learn_their_own_capabilities(tmp_path: Path) -> None:
    """One endpoint rejects structured output, the other accepts it; both are asked at once."""
    from ea_core.llm.cache import AnswerCache

    inputs, gold = make_inputs(12)
    with ScriptedServer(gold, supports_response_format=False) as rejecting, ScriptedServer(gold) as accepting:
        p_rej, p_acc = provider_for(rejecting, concurrency=4), provider_for(accepting, concurrency=4)
        answers: dict[str, list[Any]] = {}
        _run_in_threads(
            lambda: answers.__setitem__("rej", p_rej.classify(inputs, LABELS)[0]),
            lambda: answers.__setitem__("acc", p_acc.classify(inputs, LABELS)[0]),
        )
        for name in ("rej", "acc"):
            assert [LABELS[a.label] for a in answers[name]] == list(gold.values())
        assert p_rej.describe()["structured_output"]["supported"] is False
        assert p_acc.describe()["structured_output"]["supported"] is True
        assert len([r for r in rejecting.requests if "response_format" in r.body]) == 1
        assert all("response_format" in r.body for r in accepting.requests)

        # Same endpoint, no shared cache: a second provider learns for itself (probes once more) ...
        more, _ = make_inputs(16)
        provider_for(rejecting).classify(more[12:], LABELS)
        assert len([r for r in rejecting.requests if "response_format" in r.body]) == 2
        # ... while providers sharing an AnswerCache learn from each other through its table.
        cache = AnswerCache(tmp_path / "lm.sqlite")
        provider_for(rejecting, cache).classify(more[12:14], LABELS)
        before = len([r for r in rejecting.requests if "response_format" in r.body])
        assert before == 3
        sibling = provider_for(rejecting, cache)
        sibling.classify(more[14:], LABELS)
        assert len([r for r in rejecting.requests if "response_format" in r.body]) == before
        assert sibling.describe()["structured_output"]["supported"] is False


def test_same_provider_from_two_threads_probes_once() -> None:
    inputs, gold = make_inputs(24)
    with ScriptedServer(gold, supports_response_format=False) as srv:
        provider = provider_for(srv, concurrency=4)
        _run_in_threads(lambda: provider.classify(inputs[:12], LABELS), lambda: provider.classify(inputs[12:], LABELS))
        probes = [r for r in srv.requests if "response_format" in r.body]
        assert 1 <= len(probes) <= 2  # one per concurrent classify at most, never one per request
        provider.classify(make_inputs(30)[0][24:], LABELS)
        assert len([r for r in srv.requests if "response_format" in r.body]) == len(probes)


# ---------------------------------------------------------------------------- torch threads


def test_models_never_change_torch_threads(tiny_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    split = _synthetic(60, 24)
    for spec, settings in (
        ("tfidf", {}),
        (f"head:{tiny_dir}", {"cache_dir": str(tmp_path), "epochs": 2}),
        (f"finetune:{tiny_dir}", {"epochs": 1, "batch_size": 16}),
    ):
        model = make_model(spec, **settings).fit(split, split, ["neg", "pos"])
        model.predict_proba(split)
        model.predict_proba(split.subset(range(3)))  # a live single-input-sized call
        model.fit(split.subset(range(10)), None, ["neg", "pos"], warm_start=True)
    assert calls == []


def test_a_threads_setting_is_not_applied_but_explained(tiny_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ea_core")
    model = make_model(f"head:{tiny_dir}", threads=1)
    assert model.get_config()["threads"] == 1  # still saved, so saved configs keep loading
    assert "configure_process" in caplog.text


def test_configure_process_is_one_time_and_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers.utils.logging as hf_logging
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    state = {"threads": torch.get_num_threads()}
    calls: list[int] = []

    def fake_set(n: int) -> None:
        calls.append(n)
        state["threads"] = n

    monkeypatch.setattr(torch, "set_num_threads", fake_set)
    monkeypatch.setattr(torch, "get_num_threads", lambda: state["threads"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    configure_process(threads=state["threads"] + 1)
    configure_process(threads=state["threads"])  # the same choice again: nothing changes
    assert len(calls) == 1
    assert not hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == logging.ERROR
    assert gguf_utils.tqdm is hf_logging.tqdm  # the GGUF loader now obeys transformers' switch

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    configure_process()  # the user's OMP_NUM_THREADS wins over the core count
    assert len(calls) == 1
    with pytest.raises(ConfigError):
        configure_process(threads=0)


# ---------------------------------------------------------------------------- random state


@pytest.mark.slow
def test_fit_is_reproducible_and_leaves_global_rng_alone(tiny_dir: str, tmp_path: Path) -> None:
    train, val, test = _synthetic(80, 25), _synthetic(30, 26), _synthetic(30, 27)
    for spec, settings in (
        (f"head:{tiny_dir}", {"cache_dir": str(tmp_path), "epochs": 5}),
        (f"finetune:{tiny_dir}", {"epochs": 1, "batch_size": 16}),
    ):
        torch.manual_seed(1234)
        before = torch.random.get_rng_state()
        first = make_model(spec, seed=7, **settings).fit(train, val, ["neg", "pos"]).predict_proba(test)
        assert torch.equal(torch.random.get_rng_state(), before), spec
        torch.rand(5)  # whatever the caller's state is, the same seed gives the same model
        second = make_model(spec, seed=7, **settings).fit(train, val, ["neg", "pos"]).predict_proba(test)
        np.testing.assert_array_equal(first, second)
        other = make_model(spec, seed=8, **settings).fit(train, val, ["neg", "pos"]).predict_proba(test)
        assert not np.array_equal(first, other), spec


@pytest.mark.slow
def test_two_head_fits_in_threads_match_fits_alone(tiny_dir: str, tmp_path: Path) -> None:
    """Each fit draws from its own generators, so running two at once changes neither."""
    train, val, test = _synthetic(80, 28), _synthetic(30, 29), _synthetic(30, 30)

    def fit(seed: int) -> np.ndarray:
        model = make_model(f"head:{tiny_dir}", cache_dir=str(tmp_path), epochs=8, seed=seed)
        return model.fit(train, val, ["neg", "pos"]).predict_proba(test)

    alone = {seed: fit(seed) for seed in (1, 2)}
    together: dict[int, np.ndarray] = {}
    _run_in_threads(*(lambda s=seed: together.__setitem__(s, fit(s)) for seed in (1, 2)))
    for seed in (1, 2):
        np.testing.assert_array_equal(together[seed], alone[seed])


# ---------------------------------------------------------------------------- model loading


def test_concurrent_model_loads_leave_transformers_unpatched(tiny_dir: str) -> None:
    """Building a transformers model swaps process-wide functions (torch.nn.init, tie_weights,
    torch's default dtype) and puts them back; two builds at once must not leave them swapped
    (that once left a later LM with an untied, meta-device lm_head)."""
    import torch.nn.init as init
    from transformers import PreTrainedModel

    def snapshot() -> tuple[Any, ...]:
        return (PreTrainedModel.tie_weights, PreTrainedModel.init_weights, init.kaiming_uniform_, init.normal_,
                torch.get_default_dtype())

    before = snapshot()

    def load_encoders() -> None:
        for _ in range(3):
            _head(tiny_dir, EmbeddingMemory(0))._load_encoder()

    def build_classifiers() -> None:
        for _ in range(3):
            make_model(f"finetune:{tiny_dir}")._build(["neg", "pos"])

    _run_in_threads(load_encoders, load_encoders, build_classifiers, build_classifiers)
    assert snapshot() == before
