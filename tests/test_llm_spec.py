"""One `LMSpec` value: what LM the user chose, where its key comes from, and what it costs.

The money rule is the point: an endpoint on this machine is not free by itself (it may be a proxy
to a paid API), so a money cap on an unknown price refuses to start, before any request.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle

import pytest

from ea_core.errors import ConfigError
from ea_core.llm import LMSpec, make_provider
from ea_core.llm.openai_api import OpenAIProvider
from ea_core.llm.spec import (ENDPOINT, FREE, FROM_TABLE, FROM_USER, IMAGE_KNN_SPEC, IN_PROCESS, KEY_ENV, KEY_NONE,
                              KEY_PASTED, KEY_URL, KNOWN, LOCAL_IMAGE, LOCAL_TEXT, NONE, SAID_FREE,
                              SELF_HOSTED_PRESET, UNKNOWN)
from ea_core.runconfig import RunConfig, check_lm_settings, check_money_caps
from tests.fruit import LABELS, lm_answer, make_task
from tests.scripted_server import ScriptedServer

SECRET = "sk-URLSECRET-9f8e7d6c5b4a"


# ------------------------------------------------------------------------------------- kinds

def test_each_kind_parses_once_into_one_value():
    api = LMSpec.parse("openai", environ={})
    assert (api.kind, api.preset, api.model, api.base_url) == (ENDPOINT, None, "gpt-4o-mini", "https://api.openai.com/v1")
    assert api.needs_key and not api.is_local and not api.is_loopback and api.key_env == "OPENAI_API_KEY"
    for spec in ("deepseek", "openai:deepseek"):
        ds = LMSpec.parse(spec, environ={"DEEPSEEK_API_KEY": "sk-ds"})
        assert (ds.preset, ds.model, ds.key_env, ds.key_source) == ("deepseek", "deepseek-chat", "DEEPSEEK_API_KEY",
                                                                    KEY_ENV)
    text = LMSpec.parse("local")
    assert (text.kind, text.model, text.base_url) == (LOCAL_TEXT, None, None)
    assert text.is_local and not text.needs_key and text.price.free and text.price.source == IN_PROCESS
    assert LMSpec.parse("local:/models/x").model == "/models/x" and LMSpec.parse("local", model="m").model == "m"
    for spec in ("local:image-knn", "local:imageknn", "local:image_knn"):
        image = LMSpec.parse(spec)
        assert (image.kind, image.spec) == (LOCAL_IMAGE, IMAGE_KNN_SPEC) and image.is_local and image.price.free
    for spec in (None, "", "none"):
        assert LMSpec.parse(spec).kind == NONE
    with pytest.raises(ConfigError, match="Unknown LM endpoint preset"):
        LMSpec.parse("nosuchpreset")


def test_a_server_on_this_machine_needs_no_key_and_the_key_source_is_named():
    local = LMSpec.parse("openai", model="m", base_url="http://127.0.0.1:8000/v1", environ={})
    assert local.is_loopback and not local.needs_key and not local.missing_key and local.key_source == KEY_NONE
    remote = LMSpec.parse("openai", model="m", base_url="https://api.example.com/v1", environ={})
    assert remote.missing_key
    assert LMSpec.parse("openai", model="m", api_key="sk-p", environ={"OPENAI_API_KEY": "sk-e"}).key_source == KEY_PASTED
    assert LMSpec.parse("openai", model="m", environ={"OPENAI_API_KEY": "sk-e"}).key == "sk-e"
    # The app reads no server variable (key_env ""): only what was pasted counts.
    assert LMSpec.parse("openai", model="m", key_env="", environ={"OPENAI_API_KEY": "sk-e"}).missing_key
    # --lm ollama without a base URL is a server on this machine (it used to ask for OPENAI_API_KEY).
    check_lm_settings(RunConfig(data="d", ssm=["tfidf"], lm="ollama", lm_model="qwen2.5:7b"), None)


def test_a_key_in_the_url_is_split_out_once_and_never_stored(tmp_path):
    spec = LMSpec.parse("openai", model="m", base_url=f"https://user:{SECRET}@llm.example.com/v1/", environ={})
    assert spec.base_url == "https://llm.example.com/v1" and spec.given_url == "https://llm.example.com/v1/"
    assert spec.key_source == KEY_URL and spec.key == SECRET and not spec.missing_key
    assert SECRET not in repr(spec) and SECRET not in json.dumps(spec.to_dict())
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(spec)
    assert SECRET.encode() not in pickle.dumps(spec.without_key())
    # A pasted key wins; the URL's is still masked in messages.
    pasted = LMSpec.parse("openai", model="m", base_url=f"https://{SECRET}@llm.example.com/v1", api_key="sk-mine",
                          environ={})
    assert pasted.key == "sk-mine" and pasted.url_key is not None
    provider = OpenAIProvider("m", base_url=f"https://{SECRET}@llm.example.com/v1", api_key="sk-mine")
    assert SECRET not in provider.scrub(f"echo {SECRET}") and SECRET not in repr(vars(provider))

    # A run's settings: config.json holds the URL without the key (the key is used, in memory).
    from ea_core.runs import RunManager

    manager = RunManager(tmp_path / "runs")
    cfg = RunConfig(data="demo:tweets", ssm=["tfidf"], lm="openai", lm_model="m",
                    lm_base_url=f"https://user:{SECRET}@llm.example.com/v1")
    run_id = manager.create(cfg, "owner")
    saved = (manager.folder(run_id) / "config.json").read_text()
    assert SECRET not in saved and json.loads(saved)["lm_base_url"] == "https://llm.example.com/v1"


# ------------------------------------------------------------------------------------- price

def test_the_price_cases():
    table = LMSpec.parse("openai", model="gpt-4o-mini", environ={}).price
    assert (table.status, table.per_1m, table.source) == (KNOWN, (0.15, 0.60), FROM_TABLE)
    assert table.label() == "$0.15 / $0.60 per 1M tokens (price table)"
    user = LMSpec.parse("openai", model="mine", price_in=0.5, price_out=2, environ={}).price
    assert (user.status, user.source, user.label()) == (KNOWN, FROM_USER, "$0.50 / $2.00 per 1M tokens (your prices)")
    assert LMSpec.parse("openai", model="mine", prices={"mine": [1, 3]}, environ={}).price.source == FROM_USER
    said = LMSpec.parse("openai", model="mine", price_in=0, price_out=0, environ={}).price
    assert (said.status, said.source, said.label()) == (FREE, SAID_FREE, "free (self-hosted, as you said)")
    assert said.estimate_note() == "free (self-hosted endpoint)"
    assert LMSpec.parse("openai", model="gpt-4o", free=True, environ={}).price.free  # the app's tick
    assert LMSpec.parse("local").price.label() == "free (in-process model)"
    assert LMSpec.parse("local").price.estimate_note() == "free (local model)"
    unknown = LMSpec.parse("openai", model="mystery", base_url="https://x.example/v1", environ={}).price
    assert unknown.status == UNKNOWN and unknown.label() == "unknown: give prices or tick self-hosted"
    # A self-hosted server preset is free unless the table knows the model.
    assert LMSpec.parse("vllm", environ={}).price.source == SELF_HOSTED_PRESET
    assert LMSpec.parse("vllm", model="gpt-4o-mini", environ={}).price.source == FROM_TABLE


def test_a_loopback_url_is_not_free_by_itself():
    proxy = LMSpec.parse("openai", model="my-model", base_url="http://localhost:4000/v1", environ={})
    assert proxy.is_loopback and proxy.price.status == UNKNOWN
    # A model the price table knows keeps its price through a proxy on this machine.
    known = LMSpec.parse("openai", model="gpt-4o-mini", base_url="http://localhost:4000/v1", environ={})
    assert known.price.status == KNOWN and known.price.per_1m == (0.15, 0.60)
    check_money_caps(RunConfig(data="d", ssm=["tfidf"], lm="openai", lm_model="gpt-4o-mini",
                               lm_base_url="http://localhost:4000/v1", budget_usd=1.0))
    with pytest.raises(ConfigError, match=r"--budget-usd.*--price-in X --price-out Y.*--price-in 0 --price-out 0"):
        check_money_caps(RunConfig(data="d", ssm=["tfidf"], lm="openai", lm_model="my-model",
                                   lm_base_url="http://localhost:4000/v1", budget_usd=1.0))
    # Explicit 0 / 0 is the user's word: free, and the cap passes.
    check_money_caps(RunConfig(data="d", ssm=["tfidf"], lm="openai", lm_model="my-model", price_in=0, price_out=0,
                               lm_base_url="http://localhost:4000/v1", budget_usd=1.0))


def _cli(argv: list[str]) -> tuple[int, str]:
    from ea_core.cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.mark.parametrize("cap", [["--budget-usd", "1"], ["--max-cost-per-1k", "0.5"]])
def test_a_cap_on_an_unpriced_model_at_a_local_url_refuses_before_any_request(tmp_path, monkeypatch, cap):
    monkeypatch.setenv("EA_TEST_KEY", "sk-test")
    data = tmp_path / "fruit.csv"
    gold = make_task(data)
    with ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer) as srv:
        out = tmp_path / "runs" / "x"
        argv = ["run", "--data", str(data), "--ssm", "tfidf", "--lm", "openai", "--lm-model", "my-proxied-model",
                "--lm-base-url", srv.url, "--lm-key-env", "EA_TEST_KEY", "--out", str(out), *cap]
        code, err = _cli(argv)
        assert code == 2 and cap[0] in err and "--price-in 0 --price-out 0" in err and "on this machine" in err
        assert srv.count == 0 and srv.models_requests == 0  # not even the free GET /models
        assert not out.exists()  # refused before the run folder
        from ea_core.pipeline import Pipeline

        cfg = RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="my-proxied-model", lm_base_url=srv.url,
                        lm_key_env="EA_TEST_KEY", budget_usd=1.0)
        with pytest.raises(ConfigError, match="--price-in"):
            Pipeline(cfg, tmp_path / "runs" / "y").run()
        assert srv.count == 0 and srv.models_requests == 0


def test_prices_reach_the_provider_and_its_answers():
    from tests.scripted_server import GOLD, INPUTS, LABELS as L3

    with ScriptedServer(GOLD) as srv:
        inputs, LABELS = INPUTS[:2], L3  # noqa: N806
        proxy = OpenAIProvider("gpt-4o-mini", base_url=srv.url, api_key="sk-x", max_retries=0)
        answers, usage = proxy.classify(inputs, LABELS)
        assert not usage.price_unknown and usage.cost_usd > 0 and all(a.cost_usd > 0 for a in answers)
        unpriced = OpenAIProvider("my-model", base_url=srv.url, api_key="sk-x", max_retries=0)
        _, usage = unpriced.classify(inputs, LABELS)
        assert usage.price_unknown and unpriced.describe()["price_usd_per_1m"] == "price unknown"
        free = make_provider("openai", model="my-model", base_url=srv.url, api_key="sk-x",
                             prices={"my-model": [0, 0]})
        _, usage = free.classify(inputs, LABELS)
        assert not usage.price_unknown and usage.cost_usd == 0
        assert free.describe()["price_usd_per_1m"] == {"input": 0.0, "output": 0.0, "note": SAID_FREE}


def test_the_cost_estimate_names_a_free_endpoint_as_self_hosted():
    from ea_core.data import load_dataset
    from ea_core.llm.planning import estimate_run_cost

    task = load_dataset("demo:tweets", max_train=40, max_val=10, max_test=10)
    said = LMSpec.parse("openai", model="mine", base_url="http://localhost:8000/v1", price_in=0, price_out=0).price
    est = estimate_run_cost(task, "mine", price=said)
    assert est.price_known and est.usd_high == 0 and "free (self-hosted endpoint)" in " ".join(est.lines)
    assert "free (local model)" in " ".join(estimate_run_cost(task, "local", local=True).lines)
    unknown = LMSpec.parse("openai", model="mine", base_url="http://localhost:8000/v1").price
    assert not estimate_run_cost(task, "mine", price=unknown).price_known


# ------------------------------------------------------------------------------------- the app

def test_the_self_hosted_tick_is_prices_zero_and_round_trips_through_the_form(tmp_path):
    from pages import form, lm
    from pages.session import Studio

    values = {k: None for k in form.KEYS}
    values.update(form.form_from_config(RunConfig(data="demo:tweets", ssm=["tfidf"], lm="openai", lm_model="mine",
                                                  lm_base_url="http://localhost:4000/v1", budget_usd=2.0)))
    assert values["free"] is False and values["base_url"] == "http://localhost:4000/v1"
    assert lm.price_line(lm.spec_of(values)) == "price: unknown: give prices or tick self-hosted"
    session = Studio(tmp_path / "runs").store("owner-s")  # the owner's uploads (none: the demo)
    with pytest.raises(ConfigError, match="self-hosted, free"):
        form.config_from_form(session, values)  # a budget on an unknown price: refused at Run
    values["free"] = True
    assert lm.price_line(lm.spec_of(values)) == "price: free (self-hosted, as you said)"
    cfg = form.config_from_form(session, values)
    assert (cfg.price_in, cfg.price_out) == (0.0, 0.0)
    again = form.form_from_config(cfg)
    assert again["free"] is True and again["price_in"] is None and again["price_out"] is None
    values.update(free=False, model="gpt-4o-mini")
    assert lm.price_line(lm.spec_of(values)) == "price: $0.15 / $0.60 per 1M tokens (price table)"
    assert lm.price_line(lm.spec_of({**values, "preset": lm.LOCAL})) == "price: free (in-process model)"
