"""Prices, estimates and the budget cap."""

from __future__ import annotations

import json

import pytest

from ea_core.errors import ConfigError
from ea_core.llm.base import FAILED
from ea_core.llm.cache import AnswerCache
from ea_core.llm.cost import PriceTable, estimate_tokens
from ea_core.llm.spend import Budget
from ea_core.llm.openai_api import OpenAIProvider
from tests.scripted_server import GOLD, INPUTS, LABELS, ScriptedServer, make_inputs, provider_for


def test_price_lookup_and_cost() -> None:
    t = PriceTable()
    assert t.price("gpt-4o-mini") == (0.15, 0.60)
    assert t.price("gpt-4o-mini-2024-07-18") == (0.15, 0.60)  # longest known prefix
    assert t.price("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert t.price("openai/gpt-4o-mini") == (0.15, 0.60)  # OpenRouter-style vendor prefix
    assert t.price("mystery-model") is None and not t.known("mystery-model")
    assert t.cost("mystery-model", 1000, 1000) == 0.0
    assert t.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    t.set("mystery-model", 1.0, 2.0)
    assert t.cost("mystery-model", 500_000, 250_000) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        t.set("x", -1, 0)


def test_price_table_json_round_trip(tmp_path) -> None:
    t = PriceTable({"my-model": {"input_per_1m": 3, "output_per_1m": 4}, "other": [1, 2]}, defaults=False)
    path = tmp_path / "prices.json"
    t.save(path)
    again = PriceTable.load(path, defaults=False)
    assert again.price("my-model") == (3.0, 4.0) and again.price("other") == (1.0, 2.0)
    assert again.price("gpt-4o") is None
    assert PriceTable.coerce(str(path)).price("gpt-4o") == (2.5, 10.0)  # defaults kept, file on top
    assert json.loads(path.read_text())["my-model"]["output_per_1m"] == 4.0
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError):
        PriceTable.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError):
        PriceTable({"m": "cheap"})


def test_estimate_tokens() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("a" * 401) == 101


def test_budget_object() -> None:
    b = Budget(1.0)
    assert not b.exhausted and b.spent == 0.0
    b.add(0.4)
    b.add(0.6)
    assert b.exhausted and b.spent == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        Budget(-1)


def test_budget_stops_calls() -> None:
    inputs, gold = make_inputs(20)
    prices = {"test-model": (100_000.0, 100_000.0)}  # a few dollars a call
    budget = Budget(20.0)
    with ScriptedServer(gold) as srv:
        p = provider_for(srv, concurrency=1, prices=prices, budget=budget)
        answers, usage = p.classify(inputs, LABELS)
        ok = [a for a in answers if a.ok]
        assert 2 <= len(ok) < 20
        assert srv.count == len(ok)
        assert usage.budget_exhausted
        assert all(a.label == FAILED and a.error == "budget exhausted" for a in answers if not a.ok)
        assert budget.spent >= 20.0
        assert budget.spent - ok[-1].cost_usd < 20.0  # stopped right after the cap was reached
        assert usage.cost_usd == pytest.approx(budget.spent)
        # the budget is shared: another provider (or stage) sends nothing more
        other = provider_for(srv, concurrency=4, prices=prices, budget=budget)
        more, u2 = other.classify(inputs[:5], LABELS)
        assert srv.count == len(ok) and u2.budget_exhausted
        assert all(a.label == FAILED and a.error == "budget exhausted" for a in more)


def test_budget_still_serves_cached_answers(tmp_path) -> None:
    with ScriptedServer(GOLD) as srv:
        cache = AnswerCache(tmp_path / "c.sqlite")
        provider_for(srv, cache).classify(INPUTS[:3], LABELS)
        spent = Budget(0.0)
        answers, usage = provider_for(srv, cache, budget=spent).classify(INPUTS[:4], LABELS)
        assert [a.ok for a in answers] == [True, True, True, False]
        assert usage.cache_hits == 3 and usage.budget_exhausted


def test_estimate_before_a_stage(tmp_path) -> None:
    with ScriptedServer(GOLD) as srv:
        cache = AnswerCache(tmp_path / "c.sqlite")
        p = provider_for(srv, cache, prices={"test-model": (1.0, 2.0)})
        est = p.estimate(INPUTS + INPUTS[:2], LABELS)  # repeats are not extra calls
        assert est.calls == len(INPUTS) and est.cached == 2
        assert est.prompt_tokens > 0 and est.completion_tokens > 0
        assert est.usd == pytest.approx((est.prompt_tokens * 1.0 + est.completion_tokens * 2.0) / 1e6)
        assert est.price_known
        _, usage = p.classify(INPUTS[:4], LABELS)
        # the estimate is in the right ballpark of what was paid
        per_call = (est.prompt_tokens + est.completion_tokens) / est.calls
        assert 0.3 < per_call / (usage.tokens / usage.calls) < 3
        est2 = p.estimate(INPUTS, LABELS)
        assert est2.calls == len(INPUTS) - 4 and est2.cached == 4
        assert srv.count == 4  # estimating sends nothing


def test_unknown_price_is_flagged() -> None:
    p = OpenAIProvider("mystery-model", base_url="https://api.example.com/v1", api_key="sk-x")
    assert not p.price_known
    assert p.describe()["price_usd_per_1m"] == "price unknown"
    est = p.estimate(INPUTS, LABELS)
    assert est.usd == 0.0 and not est.price_known
    # An endpoint on this machine is not free by itself (it may be a proxy to a paid API) ...
    local = OpenAIProvider("llama3", base_url="http://localhost:11434/v1")
    assert not local.price_known and local.describe()["price_usd_per_1m"] == "price unknown"
    # ... it is when the user says so, or picked a self-hosted server preset; a priced model keeps its price.
    assert OpenAIProvider("llama3", base_url="http://localhost:11434/v1", free=True).price_known
    assert OpenAIProvider("llama3", base_url="http://localhost:11434/v1", preset="ollama").price_known
    proxy = OpenAIProvider("gpt-4o-mini", base_url="http://localhost:4000/v1")
    assert proxy.describe()["price_usd_per_1m"] == {"input": 0.15, "output": 0.6}
