"""The Batch API path (`OpenAIProvider.classify_batch`) against a scripted files + batches server:
answers at the batch price land in the cache, a restart polls the saved batch instead of paying
again, failed lines and expiry leave only their requests to ask again, a failed batch pays nothing."""

from __future__ import annotations

import pytest

from ea_core.errors import LMError
from ea_core.llm.base import FAILED
from ea_core.llm.batch_api import BATCH_PRICE_FACTOR, BatchRecord
from ea_core.llm.cache import AnswerCache
from ea_core.llm.spend import Budget
from tests.scripted_server import GOLD, GOLD_IDX, INPUTS, LABELS, Fault, ScriptedServer, provider_for

PRICES = {"test-model": [1.0, 2.0]}  # USD per 1M tokens


def test_a_batch_answers_at_half_price_and_fills_the_cache(tmp_path):
    with ScriptedServer(GOLD, labels=LABELS) as srv:
        prov = provider_for(srv, AnswerCache(tmp_path / "lm.sqlite"), prices=PRICES)
        answers, usage = prov.classify_batch(INPUTS, LABELS, state_path=tmp_path / "mine_batch.json", poll_s=0.01)
        assert [a.label for a in answers] == GOLD_IDX
        assert srv.batch_api.created == 1 and usage.calls == len(INPUTS) and usage.failures == 0
        full = sum(prov.price.cost(a.prompt_tokens, a.completion_tokens) for a in answers)
        assert usage.cost_usd == pytest.approx(full * BATCH_PRICE_FACTOR) and usage.cost_usd > 0
        assert not (tmp_path / "mine_batch.json").exists()  # collected
        n = srv.count
        again, usage2 = provider_for(srv, AnswerCache(tmp_path / "lm.sqlite"), prices=PRICES).classify(INPUTS, LABELS)
        assert [a.label for a in again] == GOLD_IDX and usage2.calls == 0 and srv.count == n  # all from the cache


def test_a_restart_polls_the_saved_batch_instead_of_paying_again(tmp_path):
    state = tmp_path / "mine_batch.json"
    with ScriptedServer(GOLD, labels=LABELS) as srv:
        srv.batch_api.polls = 3
        prov = provider_for(srv, AnswerCache(tmp_path / "lm.sqlite"))
        answers, usage = prov.classify_batch(INPUTS, LABELS, state_path=state, poll_s=0.01, max_wait_s=0)
        assert all(a.label == FAILED for a in answers) and "saved" in answers[0].error
        assert BatchRecord.load(state).batch_id == "batch_0"
        fresh = provider_for(srv, AnswerCache(tmp_path / "lm.sqlite"))  # a new process after a kill
        answers, usage = fresh.classify_batch(INPUTS, LABELS, state_path=state, poll_s=0.01)
        assert [a.label for a in answers] == GOLD_IDX
        assert srv.batch_api.created == 1  # the same batch, polled: nothing submitted twice


def test_failed_lines_and_expiry_leave_only_their_requests_to_ask_again(tmp_path):
    state = tmp_path / "b.json"
    bad = INPUTS[0][0]
    with ScriptedServer(GOLD, labels=LABELS, faults=[Fault("500", times=1, match=bad)]) as srv:
        srv.batch_api.expire_after = 6
        prov = provider_for(srv, AnswerCache(tmp_path / "lm.sqlite"))
        answers, usage = prov.classify_batch(INPUTS, LABELS, state_path=state, poll_s=0.01)
        labels = [a.label for a in answers]
        assert labels[0] == FAILED and labels[1:6] == GOLD_IDX[1:6] and all(x == FAILED for x in labels[6:])
        assert usage.failures == len(INPUTS) - 5 and usage.calls == 5
        srv.batch_api.expire_after = None
        answers, usage = prov.classify_batch(INPUTS, LABELS, state_path=state, poll_s=0.01)
        assert [a.label for a in answers] == GOLD_IDX and usage.cache_hits == 5 and usage.calls == len(INPUTS) - 5
        second = srv.batch_api.batches["batch_1"]
        assert second["request_counts"]["total"] == len(INPUTS) - 5  # only what was left


def test_a_failed_batch_pays_nothing_and_a_budget_too_small_refuses_before_submitting(tmp_path):
    with ScriptedServer(GOLD, labels=LABELS) as srv:
        srv.batch_api.fail = True
        prov = provider_for(srv, AnswerCache(tmp_path / "lm.sqlite"), prices=PRICES)
        answers, usage = prov.classify_batch(INPUTS, LABELS, state_path=tmp_path / "b.json", poll_s=0.01)
        assert all(a.label == FAILED for a in answers) and usage.cost_usd == 0 and "failed" in answers[0].error
        srv.batch_api.fail = False
        poor = provider_for(srv, AnswerCache(tmp_path / "other.sqlite"), prices=PRICES, budget=Budget(1e-9))
        with pytest.raises(LMError, match="budget"):
            poor.classify_batch(INPUTS, LABELS, state_path=tmp_path / "c.json", poll_s=0.01)
        assert srv.batch_api.created == 1  # the refused one was never submitted


def test_a_run_mines_through_the_batch_api_and_a_rerun_pays_nothing(tmp_path):
    """--lm-batch: mining goes through one batch (validation and test as usual); a rerun reuses every answer."""
    from ea_core.data import load_dataset
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig

    task = load_dataset("demo:tweets", max_train=150, max_val=60, max_test=60, seed=0)
    gold = {t: task.labels[int(y)] for sp in (task.train, task.val, task.test) for t, y in zip(sp.texts, sp.labels)}
    with ScriptedServer(gold, labels=task.labels) as srv:
        cfg = RunConfig(data="demo:tweets", ssm=["tfidf"], max_train=150, max_val=60, max_test=60, lm="openai",
                        lm_model="test-model", lm_base_url=srv.url, lm_key_env="EA_TEST_KEY",
                        cache=str(tmp_path / "answers.sqlite"), lm_batch=True, lm_batch_poll_s=0.01,
                        price_in=1.0, price_out=2.0, budget_usd=1.0)
        import os
        os.environ["EA_TEST_KEY"] = "sk-test"
        try:
            state = Pipeline(cfg, tmp_path / "run").run()
            assert srv.batch_api.created == 1
            mined = len(state.mining.candidates)
            batch = srv.batch_api.batches["batch_0"]
            assert batch["request_counts"]["total"] == mined > 0 and state.lm_usage["mine"]["calls"] == mined
            n = srv.count
            Pipeline(cfg, tmp_path / "run2").run()
            assert srv.count == n and srv.batch_api.created == 1  # every answer from the cache
        finally:
            os.environ.pop("EA_TEST_KEY", None)
