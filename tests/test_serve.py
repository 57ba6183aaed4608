"""`serve`: an adapted system behind an OpenAI-compatible HTTP API, driven as a client would.

The server runs in a thread on 127.0.0.1 (one test starts the real command in a subprocess) over
bundles made here in a second (a TF-IDF model on the fruit task, see tests/fruit.py) or by a
quick EA run (`fruit_run`); its LM stage talks to a scripted OpenAI-compatible server. Clients:
the `openai` SDK for chat, `httpx` for the rest, Prometheus' own parser for /metrics.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ea_core.bundle import export_bundle, load_bundle
from ea_core.cli import build_parser
from ea_core.errors import ConfigError
from ea_core.models import make_model
from ea_core.serve.app import create_app
from ea_core.serve.main import ServerThread, build_served, cmd_from_log, cmd_serve, free_port
from ea_core.serve.metrics import DriftWatch
from ea_core.serve.reqlog import LOG_NAME, dataset_from_log
from ea_core.serve.settings import ServeSettings, check_bind, is_loopback
from ea_core.splits import Split
from tests.fruit import LABELS, is_dark, is_hard, item, lm_answer, make_task
from tests.scripted_server import Fault, ScriptedServer

ROOT = Path(__file__).resolve().parents[1]
KEY = "ea-serve-test-key-0b7c2f"
LM_SECRET = "sk-LMSECRET-serve-7d1e4a"
PRICES = {"test-model": [0.15, 0.6]}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def fruit(tmp_path_factory):
    """(gold, texts, a saved TF-IDF model folder) for the fruit task."""
    root = tmp_path_factory.mktemp("serve_fruit")
    gold = make_task(root / "fruit.csv")
    rows = list(csv.DictReader(open(root / "fruit.csv", newline="")))
    split = Split([r["text"] for r in rows], np.array([LABELS.index(r["label"]) for r in rows]))
    model = make_model("tfidf", seed=0)
    model.fit(split, None, LABELS)
    model.save(root / "tfidf")
    return gold, [r["text"] for r in rows], root / "tfidf"


def make_bundle(folder: Path, model_dir: Path, *, threshold: float = 0.8, lm: bool = True, tuned: float = 0.3,
                pair: bool = False) -> Path:
    stages = [{"name": "tfidf", "threshold": threshold, "folder": model_dir, "temperature": 1.0}]
    if lm:
        stages.append({"name": "lm", "threshold": 0.0})
    return export_bundle(folder, labels=LABELS, stages=stages,
                         lm={"spec": "openai", "model": "test-model", "prices": PRICES} if lm else None,
                         task={"name": "fruit", "pair": pair, "text_col": "text",
                               "pair_col": "text_pair" if pair else None, "modality": "text"},
                         metrics={"system": "ea", "val_lm_call_rate": tuned})


@pytest.fixture(scope="module")
def bundle(fruit, tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", fruit[2])


@pytest.fixture(scope="module")
def lm_server(fruit):
    srv = ScriptedServer(fruit[0], labels=LABELS, answer_fn=lm_answer).start()
    yield srv
    srv.close()


@pytest.fixture
def serve(tmp_path):
    """Factory: serve(bundle, lm_server=None, **settings/build options) -> a started ServerThread."""
    started = []

    def start(bundle_dir, lm=None, *, cache=None, budget_usd=None, use_lm=True, lm_base_url=None, **settings):
        settings.setdefault("api_key", KEY)
        served = build_served(bundle_dir, ServeSettings(**settings),
                              lm_base_url=lm_base_url or (lm.url if lm is not None else None),
                              lm_api_key=LM_SECRET, cache=str(cache or tmp_path / "lm_cache.sqlite"),
                              budget_usd=budget_usd, use_lm=use_lm)
        srv = ServerThread(create_app(served)).start()
        srv.served = served
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def shared(bundle, lm_server, tmp_path_factory):
    """One server for the tests that only check replies to bad requests."""
    served = build_served(bundle, ServeSettings(api_key=KEY), lm_base_url=lm_server.url, lm_api_key=LM_SECRET,
                          cache=str(tmp_path_factory.mktemp("shared") / "lm_cache.sqlite"))
    with ServerThread(create_app(served)) as srv:
        yield srv


def client(srv, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=30)


def post(srv, path: str, body=None, *, key: str = KEY, content: bytes | None = None, **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(srv.url + path, json=body if content is None else None, content=content, headers=headers,
                      timeout=30, **kw)


def metrics_of(srv) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value}, parsed by prometheus_client's own parser."""
    text = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def easy(texts):
    """Texts the TF-IDF model answers (it names its class's fruit)."""
    return [t for t in texts if not is_hard(item(t))]


def hard(texts):
    """Texts the TF-IDF model is unsure of: they reach the LM, which knows them unless dark."""
    return [t for t in texts if is_hard(item(t)) and not is_dark(item(t))]


# --------------------------------------------------------------------------- chat completions


def test_chat_answers_the_label_with_its_route(serve, bundle, lm_server, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_server)
    c = client(srv)
    raw = c.chat.completions.with_raw_response.create(
        model="ea", messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": easy(texts)[0]}])
    reply = raw.parse()
    assert reply.choices[0].message.content == gold[easy(texts)[0]]
    ea = reply.model_extra["ea"]
    assert ea["answered_by"] == "tfidf" and not ea["lm_reached"] and ea["id"] == reply.id
    assert ea["stages"][0]["stage"] == "tfidf" and ea["stages"][0]["confidence"] >= 0.8 and ea["stages"][0]["took"]
    assert reply.usage.total_tokens == 0
    assert raw.headers["x-ea-answered-by"] == "tfidf" and raw.headers["x-ea-lm-called"] == "false"
    assert raw.headers["x-ea-id"] == reply.id and raw.headers["x-ea-route"].startswith("tfidf=")

    text = hard(texts)[0]
    before = lm_server.count_for(text)
    raw = c.chat.completions.with_raw_response.create(model="anything", messages=[{"role": "user", "content": text}])
    reply = raw.parse()
    assert reply.choices[0].message.content == gold[text] and reply.model == "anything"
    ea = reply.model_extra["ea"]
    assert ea["answered_by"] == "lm" and ea["lm_called"] and ea["cost_usd"] > 0
    assert [s["stage"] for s in ea["stages"]] == ["tfidf", "lm"] and not ea["stages"][0]["took"]
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens + \
        reply.usage.completion_tokens
    assert raw.headers["x-ea-lm-called"] == "true" and float(raw.headers["x-ea-cost-usd"]) > 0
    # Asked again: the answer cache answers, nothing is paid, the LM is not called.
    again = c.chat.completions.create(model="ea", messages=[{"role": "user", "content": text}])
    assert again.choices[0].message.content == gold[text] and again.model_extra["ea"]["cache_hit"]
    assert again.usage.total_tokens == 0 and lm_server.count_for(text) == before + 1


@pytest.mark.slow
def test_the_route_matches_the_bundle_loaded_for_predict(serve, bundle, lm_server, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_server)
    system = load_bundle(bundle, api_key=LM_SECRET, base_url=lm_server.url)
    sample = texts[:40]
    got = post(srv, "/v1/classify", {"inputs": sample}).json()["results"]
    for text, res in zip(sample, got):
        trace = system.route_one(text)
        assert (res["label"], res["answered_by"]) == (trace.prediction, trace.answered_by)
        assert res["route"]["stages"][0]["confidence"] == pytest.approx(trace.stages[0].confidence)


def test_streaming_is_one_chunk_then_done(serve, bundle, lm_server, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_server)
    chunks = list(client(srv).chat.completions.create(
        model="ea", messages=[{"role": "user", "content": easy(texts)[1]}], stream=True))
    assert len(chunks) == 1 and chunks[0].choices[0].delta.content == gold[easy(texts)[1]]
    assert chunks[0].choices[0].finish_reason == "stop" and chunks[0].model_extra["ea"]["answered_by"] == "tfidf"
    raw = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "apple"}], "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n") and raw.text.count("data: ") == 2


def test_unknown_fields_are_ignored_and_content_parts_are_read(serve, bundle, lm_server, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_server)
    text = easy(texts)[2]
    reply = client(srv).chat.completions.create(
        model="gpt-4o-mini", temperature=0.3, max_tokens=5, n=1, user="u1", logprobs=True,
        messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
        extra_body={"no_such_field": {"x": [1, 2]}, "tools": []})
    assert reply.choices[0].message.content == gold[text]


def test_a_pair_as_two_user_messages_or_a_json_body(serve, fruit, tmp_path):
    gold, texts, _ = fruit
    # A pair task: the label follows the fruit in the second text.
    rng = np.random.default_rng(0)
    firsts = [f"first text {i}" for i in range(120)]
    fruits = {"a": "apple", "b": "banana", "c": "cherry"}
    y = rng.integers(0, 3, 120)
    seconds = [f"{fruits[LABELS[k]]} says {i}" for i, k in enumerate(y)]
    model = make_model("tfidf", seed=0)
    model.fit(Split(firsts, y, seconds), None, LABELS)
    model.save(tmp_path / "pair-model")
    pair_bundle = make_bundle(tmp_path / "pair-bundle", tmp_path / "pair-model", lm=False, pair=True)
    srv = serve(pair_bundle)
    c = client(srv)
    two = c.chat.completions.create(model="ea", messages=[{"role": "user", "content": "first text"},
                                                          {"role": "user", "content": "cherry says hello"}])
    body = c.chat.completions.create(model="ea", messages=[
        {"role": "user", "content": json.dumps({"text": "first text", "text_pair": "cherry says hello"})}])
    assert two.choices[0].message.content == body.choices[0].message.content == "c"
    res = post(srv, "/v1/classify", {"inputs": [{"text": "first text", "text_pair": "banana says hi"}]}).json()
    assert res["results"][0]["label"] == "b"
    lone = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "only one text"}]})
    assert lone.status_code == 400 and "pair" in lone.json()["error"]["message"]


# ------------------------------------------------------------------------------------ classify


def test_classify_answers_one_result_per_input(serve, bundle, lm_server, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_server)
    sample = easy(texts)[:5] + hard(texts)[:3]
    res = post(srv, "/v1/classify", {"inputs": sample, "model": "ea", "whatever": 1})
    assert res.status_code == 200
    results = res.json()["results"]
    assert [r["label"] for r in results] == [gold[t] for t in sample]
    assert len({r["id"] for r in results}) == len(sample)
    for r in results:
        assert set(r["probabilities"]) == set(LABELS) and sum(r["probabilities"].values()) == pytest.approx(1)
        assert r["probabilities_from"] == "tfidf" and r["route"]["stages"][0]["stage"] == "tfidf"
    assert [r["answered_by"] for r in results] == ["tfidf"] * 5 + ["lm"] * 3
    assert res.json()["usage"]["total_tokens"] == sum(r["usage"]["total_tokens"] for r in results)


def test_models_health_and_readiness(serve, bundle, lm_server):
    srv = serve(bundle, lm_server)
    ids = [m.id for m in client(srv).models.list().data]
    assert ids == ["ea", "ea:fruit"]
    assert httpx.get(srv.url + "/healthz").json() == {"status": "ok"}  # probes need no key
    ready = httpx.get(srv.url + "/readyz").json()
    assert ready["ready"] and ready["lm_reachable"] and ready["lm_share"]["tuned"] == 0.3


@pytest.mark.slow
def test_readiness_fails_while_the_lm_endpoint_is_down(serve, bundle):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    srv = serve(bundle, lm_base_url=dead)
    res = httpx.get(srv.url + "/readyz", timeout=60)
    assert res.status_code == 503 and res.json()["lm_reachable"] is False
    assert httpx.get(srv.url + "/healthz").status_code == 200


# ------------------------------------------------------------------------------------- metrics


def test_metrics_in_prometheus_text(serve, bundle, lm_server, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_server)
    m0 = metrics_of(srv)
    assert m0["ea_requests_total"] == {(("stage", "tfidf"),): 0.0, (("stage", "lm"),): 0.0}
    sample = easy(texts)[:6] + hard(texts)[10:14]
    results = post(srv, "/v1/classify", {"inputs": sample}).json()["results"]
    chat = client(srv).chat.completions.create(model="ea", messages=[{"role": "user", "content": easy(texts)[1]}])
    post(srv, "/v1/classify", content=b"{not json")
    by = [r["answered_by"] for r in results] + [chat.model_extra["ea"]["answered_by"]]
    n_lm = by.count("lm")
    assert by.count("tfidf") >= 6 and n_lm >= 4
    m = metrics_of(srv)
    assert m["ea_requests_total"] == {(("stage", "tfidf"),): by.count("tfidf"), (("stage", "lm"),): n_lm}
    assert m["ea_lm_calls_total"][()] + m["ea_lm_cache_hits_total"][()] == n_lm
    assert m["ea_lm_cost_usd_total"][()] > 0 and m["ea_lm_tokens_total"][(("kind", "prompt"),)] > 0
    assert m["ea_request_duration_seconds_count"][(("endpoint", "classify"),)] == 2
    assert m["ea_request_duration_seconds_count"][(("endpoint", "chat"),)] == 1
    assert m["ea_stage_confidence_count"][(("stage", "tfidf"),)] == 11
    assert m["ea_stage_confidence_count"][(("stage", "lm"),)] == n_lm
    assert m["ea_errors_total"][(("kind", "bad_request"),)] == 1
    assert m["ea_http_requests_total"][(("code", "400"), ("endpoint", "classify"))] == 1
    assert m["ea_lm_share"][()] == pytest.approx(n_lm / 11) and m["ea_lm_share_tuned"][()] == 0.3
    assert m["ea_lm_share_expected_low"][()] < 0.3 < m["ea_lm_share_expected_high"][()]
    assert m["ea_lm_share_drift"][()] == 0  # too few inputs to judge


def test_drift_is_said_in_metrics_and_the_log(caplog):
    watch = DriftWatch(0.3, window=200, min_inputs=100)
    with caplog.at_level(logging.WARNING, logger="ea_core.serve"):
        for i in range(200):
            watch.record(i % 10 < 3)  # 30%: within
        assert not watch.check() and not caplog.records
        for _ in range(200):
            watch.record(i % 10 < 6)
            i += 1
        assert watch.share == pytest.approx(0.6) and watch.check()
    assert caplog.text.count("LM share drift") == 1 and "tuned 30.0%" in caplog.text  # said once, when it began
    lo, hi = watch.interval()
    assert lo < 0.3 < hi < 0.4


def test_a_bundle_without_a_tuned_share_says_drift_is_not_watched(serve, fruit, lm_server, tmp_path, caplog):
    """A bundle exported at hand-picked thresholds records no tuned LM share: the log says drift is
    not watched and how to watch it, /metrics says so (watched 0, drift NaN, not 0), /readyz drift None;
    --tuned-lm-share turns the watch on."""
    folder = export_bundle(tmp_path / "bundle", labels=LABELS,
                           stages=[{"name": "tfidf", "threshold": 0.8, "folder": fruit[2], "temperature": 1.0},
                                   {"name": "lm", "threshold": 0.0}],
                           lm={"spec": "openai", "model": "test-model", "prices": PRICES},
                           task={"name": "fruit", "modality": "text", "text_col": "text"},
                           metrics={"system": "ea", "note": "thresholds chosen in the app"})
    with caplog.at_level(logging.WARNING, logger="ea_core.serve"):
        srv = serve(folder, lm_server)
    assert "drift is not watched" in caplog.text and "--tuned-lm-share" in caplog.text
    m = metrics_of(srv)
    assert m["ea_lm_share_drift_watched"][()] == 0 and np.isnan(m["ea_lm_share_drift"][()])
    assert np.isnan(m["ea_lm_share_tuned"][()])
    assert httpx.get(srv.url + "/readyz").json()["lm_share"]["drift"] is None
    watched = serve(folder, lm_server, tuned_lm_share=0.25)
    m = metrics_of(watched)
    assert m["ea_lm_share_drift_watched"][()] == 1 and m["ea_lm_share_drift"][()] == 0
    assert m["ea_lm_share_tuned"][()] == 0.25


# ---------------------------------------------------------------------------- security, limits


def test_a_wrong_or_missing_key_is_401_in_openais_shape(shared):
    srv = shared
    with pytest.raises(openai.AuthenticationError) as err:
        client(srv, key="wrong").chat.completions.create(model="ea", messages=[{"role": "user", "content": "x"}])
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    for path in ("/v1/classify", "/v1/chat/completions", "/v1/feedback"):
        res = post(srv, path, {"inputs": ["x"]}, key="")
        assert res.status_code == 401 and set(res.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(srv.url + "/metrics").status_code == 401
    assert httpx.get(srv.url + "/v1/models").status_code == 401


def test_size_limits_are_413(serve, bundle, lm_server):
    srv = serve(bundle, lm_server, max_body_bytes=20_000, max_input_chars=1_000, max_batch_inputs=4)
    big = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * 30_000}]})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    long = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * 2_000}]})
    assert long.status_code == 413
    many = post(srv, "/v1/classify", {"inputs": ["apple"] * 5})
    assert many.status_code == 413

    def chunks():  # no Content-Length: the limit holds on the stream too
        for _ in range(30):
            yield b"x" * 1000

    streamed = httpx.post(srv.url + "/v1/classify", content=chunks(), headers={"Authorization": f"Bearer {KEY}"})
    assert streamed.status_code == 413


@pytest.mark.parametrize("body", [
    b"{bad json", b"", b"[1, 2]", b'"text"', b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000,
    b'{"messages": "hello"}', b'{"messages": []}', b'{"messages": [{"role": "system", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": 5}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}',
    b'{"messages": [7]}', b'{"messages": [{"role": "user", "content": "   "}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}',
])
def test_malformed_chat_bodies_are_400_never_500(shared, body):
    res = post(shared, "/v1/chat/completions", content=body)
    assert res.status_code == 400, res.text
    assert res.json()["error"]["type"] == "invalid_request_error" and res.json()["error"]["message"]


@pytest.mark.parametrize("body", [{}, {"inputs": []}, {"inputs": "apple"}, {"inputs": [3]}, {"inputs": [{"txt": "a"}]},
                                  {"inputs": [{"text": ["a"]}]}])
def test_malformed_classify_bodies_are_400(shared, body):
    res = post(shared, "/v1/classify", body)
    assert res.status_code == 400 and "error" in res.json()


def test_unknown_paths_and_methods_in_openais_shape(shared):
    srv = shared
    res = httpx.get(srv.url + "/v1/nothing")
    assert res.status_code == 404 and res.json()["error"]["code"] == "not_found"
    assert httpx.get(srv.url + "/v1/chat/completions").status_code == 405


def test_the_command_to_show_for_a_bundle():
    from ea_core.serve.main import serve_command

    line = serve_command("runs/my run/bundle", port=8100, lm_base_url="https://u:sk-SECRET@api.example.com/v1",
                         log_dir="serve-log")
    assert line == ("python -m ea_core serve --bundle 'runs/my run/bundle' --port 8100 --api-key-env EA_SERVE_KEY "
                    "--lm-base-url https://api.example.com/v1 --log-dir serve-log")


def test_binding_beyond_loopback_needs_a_key():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.3.2.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    check_bind("127.0.0.1", None, False)
    check_bind("0.0.0.0", "a-key", False)
    check_bind("0.0.0.0", None, True)
    with pytest.raises(ConfigError, match="--api-key-env"):
        check_bind("0.0.0.0", None, False)


def test_no_key_url_secret_or_input_text_in_logs_metrics_or_replies(serve, bundle, lm_server, fruit, caplog):
    gold, texts, _ = fruit
    secret_url = lm_server.url.replace("http://", "http://user:sk-URLSECRET-99@")
    with caplog.at_level(logging.DEBUG):
        srv = serve(bundle, lm_base_url=secret_url, budget_usd=5.0)
        text = hard(texts)[20]
        reply = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": text}]})
        post(srv, "/v1/chat/completions", content=b'{"messages": [{"role": "user", "content": "CANARY-INPUT"')
        post(srv, "/v1/classify", {"inputs": ["CANARY-INPUT-2"]}, key="CANARY-WRONG-KEY")
        metrics = httpx.get(srv.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        ready = httpx.get(srv.url + "/readyz").text
    assert reply.status_code == 200 and reply.json()["ea"]["answered_by"] == "lm"
    # The key in the URL was used (the scripted LM got it) ...
    assert any(LM_SECRET in r.headers.get("authorization", "") for r in lm_server.requests)
    # ... and is nowhere else, nor the server's own key, nor any input's text.
    for blob in (caplog.text, metrics, ready, reply.text, json.dumps(dict(reply.headers))):
        for canary in ("sk-URLSECRET-99", LM_SECRET, KEY, text, "CANARY"):
            assert canary not in blob


# --------------------------------------------------------------------------------- LM faults


def test_a_failing_lm_leaves_the_answer_to_the_last_small_model(serve, bundle, fruit):
    gold, texts, _ = fruit
    with ScriptedServer(gold, labels=LABELS, faults=[Fault("500")]) as failing:
        srv = serve(bundle, failing, lm_max_retries=1)
        text = hard(texts)[30]
        raw = client(srv).chat.completions.with_raw_response.create(
            model="ea", messages=[{"role": "user", "content": text}])
        reply = raw.parse()
    ea = reply.model_extra["ea"]
    assert reply.choices[0].message.content in LABELS and ea["answered_by"] == "tfidf"
    assert ea["lm_reached"] and not ea["lm_called"] and "last small model (tfidf) answered" in ea["note"]
    assert "small model" in raw.headers["x-ea-note"] and failing.count == 2  # one try, one retry
    assert metrics_of(srv)["ea_errors_total"][(("kind", "lm_failed"),)] == 1


@pytest.mark.slow
def test_a_dead_lm_endpoint_too(serve, bundle, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_base_url=f"http://127.0.0.1:{free_port()}/v1", lm_max_retries=0)
    reply = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": hard(texts)[31]}]}).json()
    assert reply["choices"][0]["message"]["content"] in LABELS and reply["ea"]["answered_by"] == "tfidf"
    assert "LM" in reply["ea"]["note"]


def test_a_429_is_retried_and_the_lm_answers(serve, bundle, fruit):
    gold, texts, _ = fruit
    with ScriptedServer(gold, labels=LABELS, faults=[Fault("429", times=1, retry_after=0.1)]) as limited:
        srv = serve(bundle, limited)
        text = hard(texts)[32]
        reply = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}).json()
        assert limited.count == 2
    assert reply["choices"][0]["message"]["content"] == gold[text] and reply["ea"]["answered_by"] == "lm"


def test_when_the_budget_is_spent_the_last_small_model_answers(serve, bundle, lm_server, fruit, tmp_path):
    gold, texts, _ = fruit
    srv = serve(bundle, lm_server, budget_usd=1e-9, cache=tmp_path / "budget-cache.sqlite")
    first, second = hard(texts)[24], hard(texts)[25]
    paid = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": first}]}).json()
    assert paid["ea"]["answered_by"] == "lm" and paid["ea"]["cost_usd"] > 1e-9  # the first call spends it
    n = lm_server.count
    spent = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": second}]})
    reply = spent.json()
    assert lm_server.count == n  # nothing more is bought
    assert reply["ea"]["answered_by"] == "tfidf" and reply["choices"][0]["message"]["content"] in LABELS
    assert "budget is spent" in reply["ea"]["note"] and "budget" in spent.headers["x-ea-note"]
    # What was bought before is still served from the cache, free.
    again = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": first}]}).json()
    assert again["ea"]["answered_by"] == "lm" and again["ea"]["cache_hit"]
    m = metrics_of(srv)
    assert m["ea_errors_total"][(("kind", "lm_budget_spent"),)] == 1
    assert m["ea_lm_budget_spent_usd"][()] > m["ea_lm_budget_usd"][()] == 1e-9


def test_a_budget_needs_a_known_price(fruit, lm_server, tmp_path):
    folder = export_bundle(tmp_path / "no-price", labels=LABELS, stages=[
        {"name": "tfidf", "threshold": 0.8, "folder": fruit[2], "temperature": 1.0}, {"name": "lm", "threshold": 0.0}],
        lm={"spec": "openai", "model": "model-with-no-price"})
    with pytest.raises(ConfigError, match="price"):
        build_served(folder, ServeSettings(), lm_base_url=lm_server.url, lm_api_key=LM_SECRET, budget_usd=1.0)


@pytest.mark.slow
def test_two_servers_on_one_cache_buy_nothing_twice(serve, bundle, fruit, tmp_path):
    gold, texts, _ = fruit
    cache = tmp_path / "shared.sqlite"
    with ScriptedServer(gold, labels=LABELS, latency_s=0.4) as slow:
        a, b = serve(bundle, slow, cache=cache), serve(bundle, slow, cache=cache)
        sample = hard(texts)[26:30]

        async def both():
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
                return await asyncio.gather(*(http.post(s.url + "/v1/classify", json={"inputs": sample})
                                              for s in (a, b)))

        replies = asyncio.run(both())
        for text in sample:
            assert slow.count_for(text) == 1
    for res in replies:
        assert [r["label"] for r in res.json()["results"]] == [gold[t] for t in sample]


# ------------------------------------------------------------------------------ micro-batching


def test_concurrent_requests_share_a_small_model_call(serve, bundle, fruit):
    gold, texts, _ = fruit
    sample = easy(texts)[:16]

    async def burst(srv):
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            return await asyncio.gather(*(http.post(srv.url + "/v1/chat/completions",
                                                    json={"messages": [{"role": "user", "content": t}]})
                                          for t in sample))

    batched = serve(bundle, use_lm=False, batch_wait_s=0.05)
    unbatched = serve(bundle, use_lm=False, batching=False)
    answers = {}
    for name, srv in (("on", batched), ("off", unbatched)):
        replies = asyncio.run(burst(srv))
        answers[name] = [r.json()["choices"][0]["message"]["content"] for r in replies]
        m = metrics_of(srv)  # model calls and the inputs they ran
        answers[name + "_calls"] = m["ea_batch_size_count"][(("stage", "tfidf"),)]
        answers[name + "_inputs"] = m["ea_batch_size_sum"][(("stage", "tfidf"),)]
    assert answers["on"] == answers["off"] == [gold[t] for t in sample]
    assert answers["on_inputs"] == answers["off_inputs"] == 16
    # 16 requests at once share a handful of model calls (how many depends on how fast the client
    # sends them: up to 5 seen on a loaded 2-core machine); without batching each is its own call
    assert answers["off_calls"] == 16 and answers["on_calls"] <= 8


def test_a_lone_request_does_not_wait_for_the_batch_window(serve, bundle, fruit):
    gold, texts, _ = fruit
    srv = serve(bundle, use_lm=False, batch_wait_s=0.5)
    t0 = time.perf_counter()
    for t in easy(texts)[:5]:
        assert post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": t}]}).status_code == 200
    assert time.perf_counter() - t0 < 2.0  # five waits of the 0.5 s window would take 2.5 s


# ----------------------------------------------------------------- request log, feedback, back to a run


def test_feedback_and_the_log_become_data_for_a_new_run(serve, bundle, lm_server, fruit, tmp_path, capsys):
    from ea_core.data import load_dataset

    gold, texts, _ = fruit
    logs = tmp_path / "log"
    srv = serve(bundle, lm_server, log_dir=str(logs))
    sample = easy(texts)[100:110] + hard(texts)[14:20]
    results = post(srv, "/v1/classify", {"inputs": sample}).json()["results"]
    chat = client(srv).chat.completions.create(model="ea", messages=[{"role": "user", "content": easy(texts)[120]}])
    ids = [r["id"] for r in results]
    for rid, text in zip(ids[:4], sample[:4]):
        res = post(srv, "/v1/feedback", {"id": rid, "label": gold[text]})
        assert res.status_code == 200 and res.json()["was_correct"]
    wrong = "a" if gold[easy(texts)[120]] != "a" else "b"
    assert post(srv, "/v1/feedback", {"id": chat.id, "label": wrong}).json()["was_correct"] is False
    assert post(srv, "/v1/feedback", {"id": "nope", "label": "a"}).status_code == 404
    assert post(srv, "/v1/feedback", {"id": ids[0], "label": "zebra"}).status_code == 400
    assert metrics_of(srv)["ea_feedback_total"] == {(("correct", "true"),): 4.0, (("correct", "false"),): 1.0}

    rows = [json.loads(line) for line in (logs / LOG_NAME).read_text().splitlines()]
    assert sum(r["kind"] == "request" for r in rows) == 17 and sum(r["kind"] == "feedback" for r in rows) == 5
    assert all(r["label"] is None for r in rows if r["kind"] == "request")

    gold_only = dataset_from_log(logs, tmp_path / "gold.jsonl")
    assert gold_only == {"feedback": 5, "lm": 0}
    with_lm = dataset_from_log(logs, tmp_path / "more.jsonl", lm_labels=True)
    by_lm = {t for t, r in list(zip(sample, results))[4:] if r["answered_by"] == "lm"}
    assert set(sample[10:]) <= by_lm and with_lm == {"feedback": 5, "lm": len(by_lm)}
    data = [json.loads(line) for line in (tmp_path / "more.jsonl").read_text().splitlines()]
    assert {d["text"]: d["label"] for d in data if d["label_source"] == "lm"} == {t: gold[t] for t in by_lm}
    # The request log itself loads as data: the unlabelled requests are dropped, the feedback kept.
    task = load_dataset(str(logs / LOG_NAME), val_frac=0.0, test_frac=0.0)
    assert len(task.train) == 5 and any("missing label" in w for w in task.warnings)
    # And through the command line.
    assert cmd_from_log(build_parser().parse_args(["from-log", str(logs), "--out", str(tmp_path / "c.jsonl"),
                                                    "--lm-labels"])) == 0
    assert f"{5 + len(by_lm)} labelled inputs" in capsys.readouterr().err


@pytest.mark.slow
def test_the_request_log_rotates(serve, bundle, fruit, tmp_path):
    gold, texts, _ = fruit
    logs = tmp_path / "log"
    srv = serve(bundle, use_lm=False, log_dir=str(logs), log_max_bytes=2_000, log_keep=3)
    for t in easy(texts)[:40]:
        post(srv, "/v1/classify", {"inputs": [t]})
    files = sorted(p.name for p in logs.iterdir() if p.name.startswith(LOG_NAME))
    assert files == [LOG_NAME, f"{LOG_NAME}.1", f"{LOG_NAME}.2", f"{LOG_NAME}.3"]
    assert all(p.stat().st_size <= 2_000 for p in logs.iterdir() if p.is_file())


# ------------------------------------------------------------------------------ the real command


@pytest.mark.slow
def test_the_serve_command_over_a_run_bundle(fruit_run, tmp_path):
    """The fixed surface: a quick EA run's bundle, served by `python -m ea_core serve` with a key."""
    runs, run, lm = fruit_run
    port = free_port()
    env = {**os.environ, "EA_SERVE_TEST_KEY": KEY, "OPENAI_API_KEY": LM_SECRET}
    cmd = [sys.executable, "-m", "ea_core", "serve", "--bundle", str(run / "bundle"), "--host", "127.0.0.1",
           "--port", str(port), "--api-key-env", "EA_SERVE_TEST_KEY", "--lm-base-url", lm.url,
           "--cache", str(tmp_path / "cache.sqlite"), "--log-dir", str(tmp_path / "log")]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        texts = [r["text"] for r in csv.DictReader(open(runs.parent / "fruit.csv", newline=""))][:12]
        c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        reply = c.chat.completions.create(model="ea", messages=[{"role": "user", "content": texts[0]}])
        assert reply.choices[0].message.content in LABELS
        res = httpx.post(url + "/v1/classify", json={"inputs": texts}, headers={"Authorization": f"Bearer {KEY}"})
        assert len(res.json()["results"]) == len(texts)
        system = load_bundle(run / "bundle", api_key=LM_SECRET, base_url=lm.url)
        assert [r["label"] for r in res.json()["results"]] == [system.route_one(t).prediction for t in texts]
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        assert "ea_requests_total" in metrics
        assert httpx.post(url + "/v1/classify", json={"inputs": ["x"]},
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert KEY not in out and LM_SECRET not in out and texts[0] not in out
    assert "Serving" in out and "key required" in out


def test_the_command_refuses_a_public_address_without_a_key(bundle, monkeypatch):
    """(`main` prints such a ConfigError and exits 2, as for every command.)"""
    args = build_parser().parse_args(["serve", "--bundle", str(bundle), "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="--api-key-env"):
        cmd_serve(args)
    monkeypatch.delenv("EA_NO_SUCH_VARIABLE_SET", raising=False)
    args = build_parser().parse_args(["serve", "--bundle", str(bundle), "--api-key-env", "EA_NO_SUCH_VARIABLE_SET"])
    with pytest.raises(ConfigError, match="EA_NO_SUCH_VARIABLE_SET"):
        cmd_serve(args)


@pytest.mark.slow
def test_an_image_system_takes_an_image_url_part_and_classify_images(serve, tmp_path):
    """A digits system (a small CNN, then the LM): a data URL in a chat message or in /v1/classify."""
    import base64

    from ea_core.data import load_dataset

    task = load_dataset("demo:digits", max_train=100, max_val=30, max_test=30)
    model = make_model("finetune:tiny_cnn", epochs=1, seed=0)
    model.fit(task.train, task.val, task.labels)
    model.save(tmp_path / "cnn")
    folder = export_bundle(tmp_path / "img-bundle", labels=task.labels, stages=[
        {"name": "cnn", "threshold": 0.99, "folder": tmp_path / "cnn", "temperature": 1.0},
        {"name": "lm", "threshold": 0.0}],
        lm={"spec": "openai", "model": "test-model", "prices": PRICES},
        task={"name": "digits", "pair": False, "text_col": "image", "modality": "image"})
    with ScriptedServer(labels=task.labels, answer_fn=lambda req: "7") as vision:
        srv = serve(folder, vision)
        url = "data:image/png;base64," + base64.b64encode(task.test.images[0]).decode()
        reply = client(srv).chat.completions.create(model="ea", messages=[{"role": "user", "content": [
            {"type": "text", "text": "which digit?"}, {"type": "image_url", "image_url": {"url": url}}]}])
        assert reply.choices[0].message.content == "7" and reply.model_extra["ea"]["answered_by"] == "lm"
        sent = vision.requests[-1].body["messages"][-1]["content"]
        assert any(part.get("type") == "image_url" for part in sent)  # the LM saw the image
        res = post(srv, "/v1/classify", {"inputs": [{"image": url}, url]}).json()["results"]
        assert [r["label"] for r in res] == ["7", "7"]
    bad = post(srv, "/v1/classify", {"inputs": [{"image": "data:image/png;base64,aGVsbG8="}]})
    assert bad.status_code == 400 and "not a readable image" in bad.json()["error"]["message"]
    text = post(srv, "/v1/chat/completions", {"messages": [{"role": "user", "content": "a seven"}]})
    assert text.status_code == 400 and "image" in text.json()["error"]["message"]


def test_a_summarization_bundle_serves_summaries(tmp_path):
    """A summarization bundle (issue 18) on the same surface: the reply's content is the summary,
    the route says which stage wrote it at what confidence; a failing LM leaves the answer to the
    last small model; feedback (a label) is refused with the reason."""
    from ea_core.models.summarizers import LeadSummarizer

    short, long_ = "Alpha beta gamma delta.", "First words here. Then a much longer second sentence follows it."
    folder = tmp_path / "summary-bundle"
    LeadSummarizer(1).save(folder / "stage0")
    identity = [[0.0, 1.0], [0.0, 1.0]]
    with ScriptedServer({long_: "a longer text, summed up"}) as lm:
        (folder / "bundle.json").write_text(json.dumps({
            "format": "ea-summary-bundle/1", "task": {"kind": "summarization"}, "system": "ea",
            "stages": [{"name": "lead", "threshold": 0.6, "quality_map": identity, "folder": "stage0"},
                       {"name": "lm", "threshold": 0.0, "quality_map": identity, "lm": True}],
            "lm": {"kind": "openai", "base_url": "https://bundle.example/v1", "model": "m"}}))
        with pytest.raises(ConfigError, match="never chooses where your key is sent"):
            build_served(folder, ServeSettings())
        served = build_served(folder, ServeSettings(api_key="k", log_dir=str(tmp_path / "log")), lm_base_url=lm.url,
                              lm_api_key="sk-summary-lm")
        with ServerThread(create_app(served)) as srv:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=30)
            easy = c.chat.completions.create(model="ea", messages=[{"role": "user", "content": short}])
            assert easy.choices[0].message.content == short and easy.ea["answered_by"] == "lead"  # the lead is all
            hard = c.chat.completions.with_raw_response.create(model="ea", messages=[{"role": "user",
                                                                                      "content": long_}])
            reply = hard.parse()
            assert reply.choices[0].message.content == "a longer text, summed up"
            assert reply.ea["answered_by"] == "lm" and reply.ea["lm_reached"]
            assert hard.headers["x-ea-answered-by"] == "lm"
            assert lm.requests[-1].headers.get("authorization") == "Bearer sk-summary-lm"
            both = httpx.post(srv.url + "/v1/classify", json={"inputs": [short, long_]},
                              headers={"authorization": "Bearer k"}, timeout=30).json()["results"]
            assert [r["label"] for r in both] == [short, "a longer text, summed up"]
            assert "ea_requests_total" in httpx.get(srv.url + "/metrics", headers={"authorization": "Bearer k"}).text
            fb = httpx.post(srv.url + "/v1/feedback", json={"id": reply.id, "label": "x"},
                            headers={"authorization": "Bearer k"})
            assert fb.status_code == 400 and "summaries" in fb.json()["error"]["message"]
        logged = [json.loads(line) for line in (tmp_path / "log" / LOG_NAME).read_text().splitlines()]
        assert [row["source"] for row in logged[:2]] == [short, long_]
        assert [row["prediction"] for row in logged[:2]] == [short, "a longer text, summed up"]
        dead = build_served(folder, ServeSettings(lm_max_retries=0), lm_base_url=f"http://127.0.0.1:{free_port()}/v1",
                            lm_api_key="x")
        with ServerThread(create_app(dead)) as srv:
            body = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": long_}]},
                              timeout=60).json()
            assert body["choices"][0]["message"]["content"] == "First words here."
            assert body["ea"]["answered_by"] == "lead" and "the last small model (lead) answered" in body["ea"]["note"]
        meta = json.loads((folder / "bundle.json").read_text())
        meta["lm"]["price_out_per_1m"] = 1e6  # a summary costs about a dollar: a cent of budget buys none
        (folder / "bundle.json").write_text(json.dumps(meta))
        poor = build_served(folder, ServeSettings(), lm_base_url=lm.url, lm_api_key="x", budget_usd=0.01)
        asked = lm.count
        with ServerThread(create_app(poor)) as srv:
            body = httpx.post(srv.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": long_}]},
                              timeout=60).json()
        assert body["choices"][0]["message"]["content"] == "First words here." and lm.count == asked
        assert body["ea"]["note"].startswith("the LM budget is spent")


# ------------------------------------------------------------------------- the batcher on its own


def test_the_batcher_gathers_concurrent_submits_and_keeps_their_order():
    from concurrent.futures import ThreadPoolExecutor

    from ea_core.serve.batching import MicroBatcher

    calls = []

    def double(items):
        calls.append(list(items))
        return [2 * x for x in items]

    async def go():
        with ThreadPoolExecutor(2) as pool:
            b = MicroBatcher(double, pool, wait_s=0.05, max_batch=5)
            out = await asyncio.gather(*(b.submit([i, 100 + i]) for i in range(4)))
            lone = MicroBatcher(double, pool, wait_s=5.0, expected=lambda: 1)
            t0 = time.perf_counter()
            assert await lone.submit([7]) == [14]
            assert time.perf_counter() - t0 < 1.0  # nobody else was coming: no wait
            return out

    out = asyncio.run(go())
    assert out == [[2 * i, 200 + 2 * i] for i in range(4)]
    assert [len(c) for c in calls[:2]] == [5, 3]  # max_batch 5, then the rest


def test_while_a_batch_runs_a_free_slot_waits_for_as_many_requests_as_run():
    """Under load, a request back from a finished batch must not take a free slot alone (the
    others have not sent their next request yet): a second batch starts once as many requests
    wait as run, and a lone straggler waits for a running batch to end."""
    from concurrent.futures import ThreadPoolExecutor

    from ea_core.serve.batching import MicroBatcher

    sizes = []

    def slow(items):
        sizes.append(len(items))
        time.sleep(0.3)
        return list(items)

    async def go():
        with ThreadPoolExecutor(2) as pool:
            b = MicroBatcher(slow, pool, wait_s=0.01, max_running=2, expected=lambda: 100)  # more are coming
            first = [asyncio.ensure_future(b.submit([i])) for i in range(4)]  # the timer sends these 4
            await asyncio.sleep(0.1)
            straggler = asyncio.ensure_future(b.submit([4]))  # 1 waiting < 4 running: it waits
            await asyncio.sleep(0.05)
            assert sizes == [4]
            more = [asyncio.ensure_future(b.submit([i])) for i in range(5, 8)]  # now 4 wait: they go
            await asyncio.sleep(0.05)
            assert sizes == [4, 4]
            last = asyncio.ensure_future(b.submit([8]))  # both slots busy
            return await asyncio.gather(*first, straggler, *more, last)

    assert asyncio.run(go()) == [[i] for i in range(9)]
    assert sizes == [4, 4, 1]


def test_a_failing_batch_fails_each_of_its_requests():
    from concurrent.futures import ThreadPoolExecutor

    from ea_core.serve.batching import MicroBatcher

    def boom(items):
        raise ValueError("model broke")

    async def go():
        with ThreadPoolExecutor(1) as pool:
            b = MicroBatcher(boom, pool, wait_s=0.01)
            return await asyncio.gather(b.submit([1]), b.submit([2]), return_exceptions=True)

    assert all(isinstance(r, ValueError) for r in asyncio.run(go()))


# ------------------------------------------------------------------- servers an app starts


def test_an_app_starts_a_local_server_with_its_own_key_and_stops_it(fruit, lm_server, tmp_path):
    """What the Results tab's button does: the bundle served on 127.0.0.1 in this process, behind a
    fresh key, its LM at the endpoint the bundle recorded (the app's own run); one per owner."""
    from ea_core.serve.local import LocalServers

    gold, texts, model_dir = fruit
    folder = export_bundle(tmp_path / "bundle", labels=LABELS,
                           stages=[{"name": "tfidf", "threshold": 0.8, "folder": model_dir, "temperature": 1.0},
                                   {"name": "lm", "threshold": 0.0}],
                           lm={"spec": "openai", "model": "test-model", "prices": PRICES, "base_url": lm_server.url},
                           task={"name": "fruit", "modality": "text", "text_col": "text"},
                           metrics={"system": "ea", "val_lm_call_rate": 0.3})
    servers = LocalServers(2)
    with pytest.raises(ConfigError, match="no owner"):
        servers.start("", folder)
    server = servers.start("alice", folder, lm_api_key=LM_SECRET, cache=str(tmp_path / "lm_cache.sqlite"))
    try:
        assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/v1")
        assert server.readiness["ready"] and server.readiness["lm_reachable"] is True
        assert "LM answers" in server.describe() and LM_SECRET not in server.describe()
        c = openai.OpenAI(base_url=server.url, api_key=server.key, max_retries=0, timeout=30)
        asked = lm_server.count
        for text in hard(texts)[:2] + easy(texts)[:2]:
            reply = c.chat.completions.create(model="ea", messages=[{"role": "user", "content": text}])
            assert reply.choices[0].message.content == gold[text]
        assert lm_server.count > asked  # the LM answered the hard ones, with the key the app was given
        assert lm_server.requests[-1].headers.get("authorization") == f"Bearer {LM_SECRET}"
        with pytest.raises(openai.AuthenticationError):  # another key (another local user) is refused
            openai.OpenAI(base_url=server.url, api_key="guess", max_retries=0).models.list()
        with pytest.raises(ConfigError, match="in use"):  # its port is taken
            servers.start("bob", folder, port=int(server.url.split(":")[2].split("/")[0]), use_lm=False)
        servers.start("bob", folder, use_lm=False)
        with pytest.raises(ConfigError, match="already run"):  # two servers in all
            servers.start("carol", folder, use_lm=False)
        again = servers.start("alice", folder, use_lm=False)  # the owner's previous one stops first
        assert not server.alive and again.alive and servers.get("alice") is again and len(servers) == 2
        assert "LM stage is off" in again.describe()
    finally:
        servers.stop_all()
    assert servers.get("alice") is None and not servers.stop("alice")
    with pytest.raises(ConfigError, match="does not start servers"):
        LocalServers(0).start("alice", folder)


def test_a_text_encoder_runs_a_micro_batch_in_short_passes():
    """Concurrent requests share one model call, and a model that takes ``batch_size`` is told the
    server's `encode_batch` (its passes sorted by length pad little); one that does not take it is
    called without it."""
    from types import SimpleNamespace

    from ea_core.serve.engine import ServeEngine, ServeInput

    calls = []

    class Encoder:
        def predict_proba(self, split, *, batch_size=None):
            calls.append(("encoder", len(split), batch_size))
            return np.full((len(split), len(LABELS)), 1 / len(LABELS))

    class Narrow:
        def predict_proba(self, split):
            calls.append(("narrow", len(split), None))
            return np.eye(len(LABELS))[np.zeros(len(split), dtype=int)]

    stages = [SimpleNamespace(name="enc", model=Encoder(), is_lm=False, threshold=0.99, temperature=1.0),
              SimpleNamespace(name="narrow", model=Narrow(), is_lm=False, threshold=0.0, temperature=1.0)]
    engine = ServeEngine(SimpleNamespace(stages=stages, labels=LABELS, provider=None),
                         ServeSettings(encode_batch=4, batch_wait_s=0.05, model_threads=1))

    async def go():
        return await asyncio.gather(*(engine.route([ServeInput(f"text {i}")]) for i in range(12)))

    try:
        routed = asyncio.run(go())
    finally:
        engine.close()
    assert all(r[0].answered_by == "narrow" for r in routed)
    assert {c[0] for c in calls} == {"encoder", "narrow"} and len(calls) < 24  # batched across requests
    assert {c[2] for c in calls if c[0] == "encoder"} == {4} and sum(c[1] for c in calls if c[0] == "encoder") == 12
    with pytest.raises(ConfigError, match="encode-batch"):
        ServeSettings(encode_batch=0)


def test_a_served_head_model_writes_no_embedding_cache_files():
    """A head model caches the embeddings of every batch of 32+ inputs on disk (right for a run's
    fixed splits); a server's traffic is new every time, so it would add a file per batch forever."""
    from types import SimpleNamespace

    from ea_core.serve.engine import ServeEngine

    head = SimpleNamespace(use_cache=True)
    stages = [SimpleNamespace(name="head", model=head, is_lm=False, threshold=0.5, temperature=1.0),
              SimpleNamespace(name="lm", model=None, is_lm=True, threshold=0.0, temperature=1.0)]
    engine = ServeEngine(SimpleNamespace(stages=stages, labels=LABELS, provider=None), ServeSettings())
    try:
        assert head.use_cache is False
    finally:
        engine.close()
