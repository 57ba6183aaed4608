"""The OpenAI-compatible provider against a scripted server: answers, fallbacks, retries, cache."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Iterator

import pytest

from ea_core.errors import LMError
from ea_core.events import CancelToken, ProgressEvent
from ea_core.llm.base import FAILED, UNPARSEABLE
from ea_core.llm.cache import AnswerCache
from ea_core.llm.openai_api import OpenAIProvider
from tests.scripted_server import GOLD, GOLD_IDX, INPUTS, LABELS, Fault, ScriptedServer, make_inputs, provider_for


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(GOLD) as srv:
        yield srv


def test_right_answers_then_rerun_is_free(server: ScriptedServer, tmp_path) -> None:
    cache = AnswerCache(tmp_path / "lm.sqlite")
    p = provider_for(server, cache)
    answers, usage = p.classify(INPUTS, LABELS)
    assert [a.label for a in answers] == GOLD_IDX
    assert all(a.ok and not a.cached and a.error is None for a in answers)
    assert usage.calls == len(INPUTS) and usage.cache_hits == 0 and usage.failures == 0
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    n = server.count
    assert n == len(INPUTS)
    assert all(r.headers["authorization"] == "Bearer sk-test-key" for r in server.requests)

    again, usage2 = provider_for(server, cache).classify(INPUTS, LABELS)
    assert server.count == n  # 0 paid calls
    assert [a.label for a in again] == GOLD_IDX
    assert all(a.cached and a.cost_usd == 0 for a in again)
    assert usage2.calls == 0 and usage2.cache_hits == len(INPUTS)
    # label order changed: the cache still maps answers to the right label
    swapped = ["neutral", "negative", "positive"]
    moved, _ = provider_for(server, cache).classify(INPUTS, swapped)
    assert [swapped[a.label] for a in moved] == [GOLD[t] for t, _ in INPUTS]


def test_structured_output_and_logprobs_sent(server: ScriptedServer) -> None:
    p = provider_for(server)
    answers, _ = p.classify(INPUTS[:3], LABELS)
    body = server.requests[0].body
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == LABELS
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["temperature"] == 0.0 and body["model"] == "test-model"
    assert [a.raw for a in answers][0].startswith("{")
    assert [a.label for a in answers] == GOLD_IDX[:3]
    assert p.describe()["structured_output"]["supported"] is True
    assert p.gives_confidence


def test_structured_output_rejected_once_and_remembered(tmp_path) -> None:
    inputs, gold = make_inputs(24)
    with ScriptedServer(gold, supports_response_format=False) as srv:
        cache = AnswerCache(tmp_path / "lm.sqlite")
        answers, usage = provider_for(srv, cache, concurrency=8).classify(inputs, LABELS)
        assert all(a.ok for a in answers)
        assert [LABELS[a.label] for a in answers] == list(gold.values())
        with_rf = [r for r in srv.requests if "response_format" in r.body]
        assert len(with_rf) == 1  # probed once, then remembered
        assert srv.count == len(inputs) + 1
        assert usage.calls == len(inputs)
        # remembered by another provider on the same cache ...
        more, _ = make_inputs(30)
        provider_for(srv, cache).classify(more[24:], LABELS)
        assert len([r for r in srv.requests if "response_format" in r.body]) == 1
        # ... and in the cache DB for the next process
        fresh = provider_for(srv, AnswerCache(tmp_path / "lm.sqlite"))
        assert fresh.describe()["structured_output"]["supported"] is False
        before = srv.count
        again, u = fresh.classify(inputs, LABELS)
        assert srv.count == before and u.cache_hits == len(inputs)


def test_logprobs_rejected_falls_back(tmp_path) -> None:
    with ScriptedServer(GOLD, supports_logprobs=False) as srv:
        p = provider_for(srv, concurrency=4)
        answers, _ = p.classify(INPUTS, LABELS)
        assert [a.label for a in answers] == GOLD_IDX
        assert all(a.confidence is None for a in answers)
        assert len([r for r in srv.requests if r.body.get("logprobs")]) == 1
        assert not p.gives_confidence


def test_logprobs_accepted_but_ignored(tmp_path) -> None:
    with ScriptedServer(GOLD, ignores_logprobs=True) as srv:
        p = provider_for(srv, concurrency=4)
        answers, _ = p.classify(INPUTS, LABELS)
        assert [a.label for a in answers] == GOLD_IDX
        assert len([r for r in srv.requests if r.body.get("logprobs")]) == 1
        assert p.describe()["logprobs"]["supported"] is False


@pytest.mark.parametrize("structured", [True, False])
def test_logprob_confidence(structured: bool) -> None:
    conf = {t: 0.5 + 0.05 * i for i, t in enumerate(GOLD)}
    with ScriptedServer(GOLD, confidence=lambda req: next(v for t, v in conf.items() if t in req.text)) as srv:
        p = provider_for(srv, use_structured_output=structured)
        answers, _ = p.classify(INPUTS, LABELS)
        for (text, _), a in zip(INPUTS, answers):
            assert a.confidence == pytest.approx(conf[text], abs=1e-3)
            assert 0.0 <= a.confidence <= 1.0
        assert ("response_format" in srv.requests[0].body) is structured


def test_wrong_and_unparseable_answers(tmp_path) -> None:
    faults = [Fault("wrong", match="blue car"), Fault("unparseable", match="Tuesday")]
    with ScriptedServer(GOLD, faults=faults) as srv:
        cache = AnswerCache(tmp_path / "c.sqlite")
        answers, usage = provider_for(srv, cache, use_structured_output=False).classify(INPUTS, LABELS)
        by_text = {t: a for (t, _), a in zip(INPUTS, answers)}
        assert by_text["It is a blue car"].ok and LABELS[by_text["It is a blue car"].label] != "neutral"
        assert by_text["The meeting is on Tuesday"].label == UNPARSEABLE
        assert by_text["The meeting is on Tuesday"].raw
        assert usage.unparseable == 1 and usage.failures == 0
        n = srv.count
        again, _ = provider_for(srv, cache, use_structured_output=False).classify(INPUTS, LABELS)
        assert srv.count == n  # an unparseable answer was paid for: it is cached too
        assert again[TEXTS_INDEX("The meeting is on Tuesday")].label == UNPARSEABLE


def TEXTS_INDEX(text: str) -> int:  # noqa: N802 - tiny helper
    return [t for t, _ in INPUTS].index(text)


def test_429_with_retry_after_is_honoured() -> None:
    with ScriptedServer(GOLD, faults=[Fault("429", times=1, retry_after=1)]) as srv:
        p = provider_for(srv, concurrency=1, backoff_base_s=20.0)  # backoff alone would wait >= 10 s
        t0 = time.perf_counter()
        answers, usage = p.classify(INPUTS[:1], LABELS)
        elapsed = time.perf_counter() - t0
        assert answers[0].label == GOLD_IDX[0]
        assert srv.count == 2 and srv.status_counts[429] == 1
        assert 0.9 <= elapsed < 6
        assert usage.calls == 1


def test_500_is_retried() -> None:
    with ScriptedServer(GOLD, faults=[Fault("500", times=2, per_input=True)]) as srv:
        answers, usage = provider_for(srv, concurrency=4).classify(INPUTS[:3], LABELS)
        assert [a.label for a in answers] == GOLD_IDX[:3]
        assert srv.count == 9 and srv.status_counts[500] == 6
        assert usage.failures == 0


def test_timeout_retried_then_failed_and_not_cached(tmp_path) -> None:
    cache = AnswerCache(tmp_path / "c.sqlite")
    with ScriptedServer(GOLD, faults=[Fault("hang", match="blue car", hang_s=5)]) as srv:
        p = provider_for(srv, cache, timeout_s=0.4, max_retries=1)
        t0 = time.perf_counter()
        answers, usage = p.classify(INPUTS, LABELS)
        assert time.perf_counter() - t0 < 4
        i = TEXTS_INDEX("It is a blue car")
        assert answers[i].label == FAILED and "timed out" in answers[i].error.lower()
        assert srv.count_for("blue car") == 2
        assert usage.failures == 1
        assert all(a.ok for j, a in enumerate(answers) if j != i)
        assert len(cache) == len(INPUTS) - 1  # the failure is not cached ...
        srv.faults.clear()
        again, u = provider_for(srv, cache).classify(INPUTS, LABELS)  # ... so a rerun retries it
        assert again[i].label == GOLD_IDX[i] and u.calls == 1 and u.cache_hits == len(INPUTS) - 1


def test_dropped_connection_is_retried() -> None:
    with ScriptedServer(GOLD, faults=[Fault("drop", times=2)]) as srv:
        answers, usage = provider_for(srv, concurrency=1).classify(INPUTS[:2], LABELS)
        assert [a.label for a in answers] == GOLD_IDX[:2]
        assert srv.count == 4 and usage.failures == 0


def test_dropped_connection_every_time_fails() -> None:
    with ScriptedServer(GOLD, faults=[Fault("drop")]) as srv:
        answers, usage = provider_for(srv, max_retries=2).classify(INPUTS[:1], LABELS)
        assert answers[0].label == FAILED and "connection" in answers[0].error.lower()
        assert srv.count == 3


def test_other_400_is_not_retried() -> None:
    with ScriptedServer(GOLD, faults=[Fault("400", message="messages: content is too long")]) as srv:
        p = provider_for(srv, use_structured_output=False, use_logprobs=False)
        answers, usage = p.classify(INPUTS[:1], LABELS)
        assert answers[0].label == FAILED and "too long" in answers[0].error
        assert srv.count == 1


def test_bad_key_raises_readable_error() -> None:
    with ScriptedServer(GOLD, faults=[Fault("401")]) as srv:
        p = provider_for(srv, api_key="sk-proj-SECRETSECRET123456789", key_env="MY_LM_KEY")
        with pytest.raises(LMError) as err:
            p.classify(INPUTS, LABELS)
        msg = str(err.value)
        assert "401" in msg and "MY_LM_KEY" in msg
        assert "SECRETSECRET" not in msg


def test_concurrency_is_limited_and_used() -> None:
    inputs, gold = make_inputs(12)
    with ScriptedServer(gold, latency_s=0.2) as srv:
        provider_for(srv, concurrency=4).classify(inputs[:1], LABELS)  # settle capabilities first
        t0 = time.perf_counter()
        answers, _ = provider_for(srv, concurrency=4).classify(inputs[1:9], LABELS)
        elapsed = time.perf_counter() - t0
        assert all(a.ok for a in answers)
        assert srv.max_in_flight <= 4
        assert srv.max_in_flight >= 3
        assert elapsed < 8 * 0.2  # faster than one at a time


def test_duplicate_inputs_are_asked_once() -> None:
    with ScriptedServer(GOLD) as srv:
        answers, usage = provider_for(srv).classify(INPUTS[:2] * 3, LABELS)
        assert srv.count == 2
        assert [a.label for a in answers] == GOLD_IDX[:2] * 3
        assert usage.calls == 2 and usage.cache_hits == 4


def test_progress_events(server: ScriptedServer) -> None:
    events: list[ProgressEvent] = []
    provider_for(server, concurrency=2).classify(INPUTS, LABELS, stage="lm:test", callback=events.append)
    assert events and all(e.stage == "lm:test" and e.total == len(INPUTS) for e in events)
    steps = [e.step for e in events]
    assert steps == sorted(steps) and steps[-1] == len(INPUTS)
    last = events[-1]
    assert last.calls == len(INPUTS) and last.cache_hits == 0 and last.failures == 0
    assert last.tokens and last.tokens > 0 and last.elapsed_s is not None and last.eta_s == 0.0


def test_cancel_returns_what_is_done(tmp_path) -> None:
    inputs, gold = make_inputs(20)
    cache = AnswerCache(tmp_path / "c.sqlite")
    token = CancelToken()

    def cb(e: ProgressEvent) -> None:
        if e.step >= 3:
            token.cancel()

    with ScriptedServer(gold, latency_s=0.1) as srv:
        p = provider_for(srv, cache, concurrency=1)
        answers, usage = p.classify(inputs, LABELS, callback=cb, cancel=token)
        done = [a for a in answers if a.ok]
        assert 3 <= len(done) < 20
        assert all(a.label == FAILED and a.error == "cancelled" for a in answers if not a.ok)
        assert srv.count < 20
        assert len(cache) == len(done)


def test_works_from_a_thread_and_inside_a_running_loop(server: ScriptedServer) -> None:
    p = provider_for(server)
    out: dict[str, object] = {}

    def in_thread() -> None:
        out["thread"] = p.classify(INPUTS[:2], LABELS)[0]

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(30)
    assert [a.label for a in out["thread"]] == GOLD_IDX[:2]  # type: ignore[union-attr]

    async def in_loop() -> list:
        return p.classify(INPUTS[2:4], LABELS)[0]

    assert [a.label for a in asyncio.run(in_loop())] == GOLD_IDX[2:4]
    answers, _ = asyncio.run(p.aclassify(INPUTS[4:5], LABELS))
    assert answers[0].label == GOLD_IDX[4]


def test_pairs_are_sent(server: ScriptedServer) -> None:
    answers, _ = provider_for(server).classify([("I love this phone", "second text")], LABELS)
    assert answers[0].label == 0
    assert "Text B: second text" in server.requests[-1].text


def test_missing_key_is_a_readable_error(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MY_KEY_VAR", raising=False)
    with pytest.raises(LMError, match="OPENAI_API_KEY.*--lm-key-env"):
        OpenAIProvider("gpt-4o-mini")
    with pytest.raises(LMError, match="MY_KEY_VAR"):
        OpenAIProvider("m", base_url="https://api.example.com/v1", key_env="MY_KEY_VAR")
    monkeypatch.setenv("MY_KEY_VAR", "sk-from-env")
    assert OpenAIProvider("m", base_url="https://api.example.com/v1", key_env="MY_KEY_VAR")
    # local servers need no key
    assert OpenAIProvider("llama3", base_url="http://localhost:11434/v1")
    assert OpenAIProvider("x", base_url="http://127.0.0.1:8000/v1", key_env="NOPE_UNSET")


def test_no_usage_in_response_is_estimated() -> None:
    with ScriptedServer(GOLD, send_usage=False) as srv:
        answers, usage = provider_for(srv).classify(INPUTS[:2], LABELS)
        assert all(a.prompt_tokens > 0 for a in answers) and usage.prompt_tokens > 0


def test_confidence_is_probability() -> None:
    with ScriptedServer(GOLD, confidence=0.999999) as srv:
        answers, _ = provider_for(srv).classify(INPUTS[:2], LABELS)
        assert all(0.99 < a.confidence <= 1.0 and not math.isnan(a.confidence) for a in answers)


def test_rejected_max_tokens_and_temperature_are_adapted() -> None:
    with ScriptedServer(GOLD, rejects=["max_tokens", "temperature"]) as srv:
        p = provider_for(srv, concurrency=1)
        answers, usage = p.classify(INPUTS[:3], LABELS)
        assert [a.label for a in answers] == GOLD_IDX[:3] and usage.failures == 0
        last = srv.requests[-1].body
        assert "max_tokens" not in last and last["max_completion_tokens"] == 64 and "temperature" not in last
        assert srv.status_counts[400] == 2  # one rejection each, then remembered


def test_forced_structured_output_fails_when_rejected() -> None:
    with ScriptedServer(GOLD, supports_response_format=False) as srv:
        p = provider_for(srv, use_structured_output=True)
        answers, usage = p.classify(INPUTS[:2], LABELS)
        assert all(a.label == FAILED and "response_format" in a.error for a in answers)
        assert all("response_format" in r.body and r.body.get("logprobs") for r in srv.requests)
        off = provider_for(srv, use_structured_output=False, use_logprobs=False)
        answers, _ = off.classify(INPUTS[:2], LABELS)
        assert [a.label for a in answers] == GOLD_IDX[:2]
        assert "response_format" not in srv.requests[-1].body and "logprobs" not in srv.requests[-1].body


def test_cancel_before_start_and_from_callback(tmp_path) -> None:
    from ea_core.errors import Cancelled

    inputs, gold = make_inputs(12)
    with ScriptedServer(gold, latency_s=0.05) as srv:
        token = CancelToken()
        token.cancel()
        answers, usage = provider_for(srv).classify(inputs, LABELS, cancel=token)
        assert srv.count == 0 and all(a.error == "cancelled" for a in answers) and usage.failures == 12

        def raising(e: ProgressEvent) -> None:
            if e.step >= 2:
                raise Cancelled()

        answers, usage = provider_for(srv, concurrency=1).classify(inputs, LABELS, callback=raising)
        assert 2 <= sum(a.ok for a in answers) < 12
        assert all(a.error == "cancelled" for a in answers if not a.ok)
