"""Money and answers under faults: a server failing in every way, a dead endpoint, two processes on
one cache, a full disk, a bad --cache, a key inside the base URL.

The rules these tests hold the LM provider and the run to: every input ends answered or counted
failed; a failure is never cached (the next run asks again) while an answer naming no label is
(it was paid for); nothing is bought twice, also by two processes at once; an unreachable
endpoint or an unwritable cache ends in a readable `EAError`, never a traceback or a long hang.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ea_core.errors import ConfigError, EAError, LMError, RunBusy
from ea_core.events import ProgressEvent
from ea_core.llm.base import FAILED, UNPARSEABLE
from ea_core.llm.cache import ANSWERED, BUSY, CLAIMED, AnswerCache, CachedAnswer
from ea_core.llm.spend import Budget, SpendLedger
from tests.scripted_server import LABELS, TRANSIENT_FAULTS, Fault, ScriptedServer, make_inputs, provider_for

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- a faulty server


def test_every_fault_kind_at_once_ends_answered_or_failed_and_never_caches_a_failure(tmp_path) -> None:
    inputs, gold = make_inputs(60)
    kinds = ["500", "429", "empty_choices", "null_content", "bad_json", "reset", "hang", "unparseable"]
    # each kind once for sure (on its own input), then a random 30% of all requests, split between the kinds
    faults = [Fault(k, times=1, match=f"number {i:04d} end", hang_s=3.0) for i, k in enumerate(kinds)]
    faults += [Fault(k, share=0.3 / len(kinds), retry_after=0.05 if k == "429" else None, hang_s=3.0) for k in kinds]
    cache = AnswerCache(tmp_path / "c.sqlite")
    with ScriptedServer(gold, faults=faults, seed=7) as srv:
        p = provider_for(srv, cache, concurrency=4, max_retries=4, timeout_s=0.6, backoff_base_s=0.01,
                         use_logprobs=False)
        events: list[ProgressEvent] = []
        answers, usage = p.classify(inputs, LABELS, callback=events.append)
        met = {r.fault for r in srv.requests}
        assert set(kinds) <= met, met  # the server really failed in every way

        last = {}  # input -> the fault its last request met (None: answered properly)
        for r in srv.requests:
            last[re.search(r"sample text number \d+ end", r.text).group(0)] = r.fault
        for (text, _), a in zip(inputs, answers):
            if a.label == FAILED:
                assert last[text] in TRANSIENT_FAULTS and a.error
            elif a.label == UNPARSEABLE:
                assert last[text] == "unparseable" and a.raw
            else:
                assert LABELS[a.label] == gold[text], (text, last[text])  # right when the server answered
        failed = sum(a.label == FAILED for a in answers)
        assert usage.failures == failed and usage.unparseable == sum(a.label == UNPARSEABLE for a in answers)
        assert usage.calls + failed == len(inputs)
        assert events[-1].failures == failed and events[-1].unparsed == usage.unparseable
        assert max(srv.per_input.values()) <= 5  # max_retries + 1
        assert len(cache) == len(inputs) - failed and cache.claims() == 0

        # Nothing that failed was cached: a fault-free rerun asks exactly the failed inputs again.
        srv.faults.clear()
        before = srv.count
        again, u2 = provider_for(srv, AnswerCache(tmp_path / "c.sqlite"), use_logprobs=False).classify(inputs, LABELS)
        assert srv.count - before == failed and u2.calls == failed and u2.cache_hits == len(inputs) - failed
        assert all(a.label != FAILED for a in again)
        assert all(LABELS[a.label] == gold[t] for (t, _), a in zip(inputs, again) if a.label >= 0)


@pytest.mark.parametrize("kind", ["empty_choices", "null_content", "bad_json", "reset", "500"])
def test_a_reply_with_no_answer_is_retried_and_never_cached(tmp_path, kind: str) -> None:
    inputs, gold = make_inputs(4)
    cache = AnswerCache(tmp_path / "c.sqlite")
    with ScriptedServer(gold, faults=[Fault(kind, times=2, per_input=True)]) as srv:
        answers, usage = provider_for(srv, cache, concurrency=2).classify(inputs, LABELS)
        assert [LABELS[a.label] for a in answers] == list(gold.values())  # the third try answers
        assert usage.failures == 0 and srv.count == 3 * len(inputs)
    with ScriptedServer(gold, faults=[Fault(kind)]) as srv:  # never an answer
        fresh, more = make_inputs(6)
        answers, usage = provider_for(srv, cache, max_retries=2).classify(fresh[4:], LABELS)
        assert all(a.label == FAILED for a in answers) and usage.failures == 2 and usage.unparseable == 0
        assert srv.count == 2 * 3 and len(cache) == len(inputs)  # retried, and nothing cached


def test_an_answer_naming_no_label_is_kept_apart_from_a_failure(tmp_path) -> None:
    inputs, gold = make_inputs(6)
    faults = [Fault("unparseable", match="0001"), Fault("null_content", match="0002")]
    cache = AnswerCache(tmp_path / "c.sqlite")
    with ScriptedServer(gold, faults=faults) as srv:
        answers, usage = provider_for(srv, cache, max_retries=1).classify(inputs, LABELS)
        assert answers[1].label == UNPARSEABLE and answers[2].label == FAILED
        assert "null" in answers[2].error
        assert usage.unparseable == 1 and usage.failures == 1 and len(cache) == 5  # the no-label answer is paid: kept
        before = srv.count
        again, u2 = provider_for(srv, cache, max_retries=1).classify(inputs, LABELS)
        assert srv.count - before == 2 and u2.cache_hits == 5  # only the failure is asked again


def test_a_probe_answer_is_found_again_by_the_next_run(tmp_path) -> None:
    """A server that ignores log-probs: the first answer was asked with them, later ones without;
    the next run (which knows) looks every answer up under the key it uses, and buys nothing."""
    inputs, gold = make_inputs(10)
    with ScriptedServer(gold, ignores_logprobs=True) as srv:
        provider_for(srv, AnswerCache(tmp_path / "c.sqlite")).classify(inputs, LABELS)
        first = srv.count
        assert first == len(inputs)
        _, usage = provider_for(srv, AnswerCache(tmp_path / "c.sqlite")).classify(inputs, LABELS)
        assert srv.count == first and usage.cache_hits == len(inputs)


# ---------------------------------------------------------------------- nothing listening


def test_an_unreachable_endpoint_is_noticed_at_once() -> None:
    inputs, _ = make_inputs(40)
    url = f"http://127.0.0.1:{_free_port()}/v1"
    from ea_core.llm.openai_api import OpenAIProvider

    p = OpenAIProvider("test-model", base_url=url, api_key="sk-x", backoff_base_s=0.01, concurrency=4,
                       max_connection_failures=8)
    t0 = time.perf_counter()
    with pytest.raises(LMError, match="could not be reached 3 times in a row"):
        p.check_endpoint()
    with pytest.raises(LMError, match=r"could not be reached 8 times in a row.*server is running"):
        p.classify(inputs, LABELS)
    assert time.perf_counter() - t0 < 15  # not 40 inputs x 6 attempts with backoff


def test_a_stage_stops_after_consecutive_connection_failures() -> None:
    inputs, gold = make_inputs(30)
    with ScriptedServer(gold, faults=[Fault("drop")]) as srv:
        with pytest.raises(LMError, match="8 times in a row"):
            provider_for(srv, concurrency=2, backoff_base_s=0.01, max_connection_failures=8).classify(inputs, LABELS)
        assert srv.count <= 8 + 2  # the failures, plus what was in flight


def test_check_endpoint_is_free_and_catches_a_refused_key() -> None:
    inputs, gold = make_inputs(2)
    with ScriptedServer(gold, api_key="sk-right-key") as srv:
        report = provider_for(srv, api_key="sk-right-key").check_endpoint()
        assert report["reachable"] and report["models"] == ["scripted"]
        with pytest.raises(LMError, match="rejected the API key"):
            provider_for(srv, api_key="sk-wrong-key").check_endpoint()
        assert srv.count == 0 and srv.models_requests == 2  # no paid request


# ------------------------------------------------------------------- two processes, one cache

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from ea_core.llm import AnswerCache, make_provider
    url, db, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    inputs = [(f"sample text number {{i:04d}} end", None) for i in range({n})]
    p = make_provider("openai", model="test-model", base_url=url, api_key="sk-child",
                      cache=AnswerCache(db), concurrency=4, claim_poll_s=0.05)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    answers, usage = p.classify(inputs, {labels!r})
    print("labels", ",".join(str(a.label) for a in answers), flush=True)
    print("paid", usage.calls, "cached", usage.cache_hits, flush=True)
    """
)


def test_two_processes_sharing_a_cache_buy_each_prompt_once(tmp_path) -> None:
    n = 50
    inputs, gold = make_inputs(n)
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), n=n, labels=LABELS))
    db, go = tmp_path / "shared.sqlite", tmp_path / "go"
    with ScriptedServer(gold, latency_s=0.05) as srv:
        kids = [subprocess.Popen([sys.executable, str(script), srv.url, str(db), str(go)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for kid in kids:
            assert kid.stdout.readline().strip() == "ready", kid.stderr.read()
        go.touch()  # both start classifying at the same moment
        outs = [kid.communicate(timeout=120) for kid in kids]
        for kid, (out, err) in zip(kids, outs):
            assert kid.returncode == 0, err
        assert max(srv.per_input.values()) == 1 and srv.count == n  # every prompt bought once
        want = ",".join(str(LABELS.index(g)) for g in gold.values())
        paid = []
        for out, _ in outs:
            lines = dict(line.split(" ", 1) for line in out.strip().splitlines() if " " in line)
            assert lines["labels"] == want  # both got every answer
            paid.append(int(lines["paid"].split()[0]))
        assert sum(paid) == n and min(paid) > 0  # they shared the work


def test_claims_wait_for_a_live_owner_and_take_over_from_a_dead_one(tmp_path) -> None:
    cache = AnswerCache(tmp_path / "c.sqlite")
    assert cache.claim("k", "me") == CLAIMED and cache.claim("k", "me") == CLAIMED  # a refresh
    assert cache.claim("k", "other") == BUSY
    cache.release("k", "me")
    assert cache.claim("k", "other") == CLAIMED
    cache.put("k", CachedAnswer("positive", None, "positive"))
    assert cache.claim("k", "me") == ANSWERED and cache.claims() == 0  # storing dropped the claim
    # a claim of a process that is gone (kill -9), or too old, is stale
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with sqlite3.connect(tmp_path / "c.sqlite") as con:
        con.execute("INSERT INTO claims VALUES ('d', 'gone', ?, ?, ?)", (dead.pid, cache.host, time.time()))
        con.execute("INSERT INTO claims VALUES ('o', 'slow', ?, ?, ?)", (os.getppid(), cache.host, time.time() - 99))
    assert cache.claim("d", "me") == CLAIMED
    assert cache.claim("o", "me", ttl_s=600) == BUSY and cache.claim("o", "me", ttl_s=60) == CLAIMED


def test_a_run_folder_has_one_writer(tmp_path, monkeypatch) -> None:
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runfolder import RunFolder
    from tests.fruit import make_task

    monkeypatch.setenv("EA_TEST_KEY", "sk-x")
    data = tmp_path / "fruit.csv"
    make_task(data)
    out = tmp_path / "runs" / "one"
    holder = RunFolder(out)
    holder.lock()  # another run is writing this folder
    cfg = RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="m", lm_base_url="http://127.0.0.1:9/v1",
                    lm_key_env="EA_TEST_KEY")
    with pytest.raises(RunBusy, match="being written by another run"):
        Pipeline(cfg, out).run()
    assert not (out / "data").exists()
    holder.unlock()


def test_the_budget_is_one_ledger_per_run_folder(tmp_path) -> None:
    ledger = tmp_path / "run" / "lm" / "spend.jsonl"
    first = Budget(1.0, ledger=ledger)
    first.add(0.4)
    first.add(0.2)
    assert first.spent == pytest.approx(0.6) and not first.exhausted
    resumed = Budget(1.0, ledger=ledger)  # a resumed session (or another process) sees the spend
    assert resumed.spent == pytest.approx(0.6) and not resumed.exhausted
    resumed.add(0.5)
    assert first.exhausted and resumed.exhausted and first.spent == pytest.approx(1.1)
    assert len(ledger.read_text().splitlines()) == 3
    assert SpendLedger(tmp_path / "old" / "spend.jsonl", opening_usd=0.25).total == pytest.approx(0.25)
    assert Budget(None, ledger=ledger).exhausted is False  # no cap: the spend is only recorded


# ------------------------------------------------------------------------- a full disk


class _FullAfter:
    """Stands in for `AnswerCache.put`: writes `n` answers, then fails as a full disk does."""

    def __init__(self, real, n: int, exc: BaseException) -> None:
        self.real, self.n, self.exc = real, n, exc

    def __call__(self, *args, **kw) -> None:
        if self.n <= 0:
            raise self.exc
        self.n -= 1
        self.real(*args, **kw)


@pytest.mark.parametrize("exc", [sqlite3.OperationalError("database or disk is full"),
                                 OSError(errno.ENOSPC, "No space left on device")])
def test_a_full_disk_stops_the_stage_cleanly_and_keeps_the_answers(tmp_path, exc) -> None:
    inputs, gold = make_inputs(20)
    cache = AnswerCache(tmp_path / "c.sqlite")
    with ScriptedServer(gold, latency_s=0.02) as srv:
        p = provider_for(srv, cache, concurrency=2)
        real = cache.put
        cache.put = _FullAfter(real, 5, exc)  # type: ignore[method-assign]
        with pytest.raises(LMError) as err:
            p.classify(inputs, LABELS)
        msg = str(err.value)
        assert "cannot be written (the disk is full)" in msg and "Free at least" in msg and " MB" in msg
        assert "kept in memory" in msg and str(tmp_path / "c.sqlite") in msg
        assert len(cache) == 5 and 1 <= len(p._unsaved) <= 2  # received after the disk filled: kept
        assert srv.count <= 5 + 2  # stopped buying at once (plus what was in flight)

        cache.put = real  # type: ignore[method-assign]  # space freed
        answers, usage = p.classify(inputs, LABELS)
        assert [LABELS[a.label] for a in answers] == list(gold.values())
        assert max(srv.per_input.values()) == 1  # the kept answers were not bought again
        assert len(cache) == len(inputs) and not p._unsaved


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs), where this machine lets the tests mount one (root in a
    container here); elsewhere the simulated full disk above is the test that runs."""
    where = tmp_path / "tiny"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({made.stderr.decode().strip()[:80]})")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_really_full_disk_stops_the_stage_cleanly_and_a_rerun_buys_only_what_was_lost(tiny_disk) -> None:
    inputs, gold = make_inputs(400)
    cache = AnswerCache(tiny_disk / "c.sqlite")
    filler = tiny_disk / "filler"
    st = os.statvfs(tiny_disk)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 64 * 1024))  # leave 64 kB: room for ~100 answers
    with ScriptedServer(gold) as srv:
        p = provider_for(srv, cache, concurrency=4)
        with pytest.raises(LMError, match=r"cannot be written \(the disk is full\).*Free at least"):
            p.classify(inputs, LABELS)
        bought = srv.count
        assert 0 < bought < len(inputs)  # stopped buying when the disk filled
        filler.unlink()  # space freed: the same provider writes what it kept, then asks the rest
        answers, _ = p.classify(inputs, LABELS)
        assert [LABELS[a.label] for a in answers] == list(gold.values())
        assert max(srv.per_input.values()) == 1 and srv.count == len(inputs)  # nothing bought twice
        assert len(cache) == len(inputs)
    cache.close()


def test_a_full_disk_while_writing_the_run_folder_is_a_clean_error(tmp_path, monkeypatch) -> None:
    import ea_core.runfolder as rf

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rf, "_finite", full)
    with pytest.raises(EAError, match="No space left on the disk to write .*x.json"):
        rf.write_json(tmp_path / "x.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []  # no half-written temp file left


# ------------------------------------------------------------------------------- --cache


def test_a_cache_path_that_cannot_hold_a_cache_is_a_clear_error(tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path))} is a directory.*--cache"):
        AnswerCache(tmp_path)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match="garbage.sqlite is not an answer cache"):
        AnswerCache(garbage)
    text = tmp_path / "notes.txt"
    text.write_text("my notes\n" * 100)
    with pytest.raises(ConfigError, match="not an answer cache"):
        AnswerCache(text)
    assert text.read_text() == "my notes\n" * 100  # left as it was
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        place = ro / "lm.sqlite"
    else:  # root writes anywhere a mode allows: use a place no one can create files in
        place = Path("/sys/ea-test/lm.sqlite")
    with pytest.raises(ConfigError, match="cannot be written.*writable|cannot be written.*write to"):
        AnswerCache(place)

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sqlite3, "connect", full)
    with pytest.raises(ConfigError, match="new.sqlite cannot be written: the disk is full. Free some space"):
        AnswerCache(tmp_path / "new.sqlite")


def test_cli_run_with_a_directory_as_cache_fails_before_training(tmp_path) -> None:
    from tests.fruit import make_task

    data = tmp_path / "fruit.csv"
    make_task(data)
    res = subprocess.run([sys.executable, "-m", "ea_core", "run", "--data", str(data), "--ssm", "tfidf", "--lm",
                          "openai", "--lm-model", "m", "--lm-base-url", "http://127.0.0.1:9/v1", "--cache",
                          str(tmp_path), "--out", str(tmp_path / "runs" / "x")], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OPENAI_API_KEY": "sk-x"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "is a directory" in res.stderr and not (tmp_path / "runs" / "x" / "ssm").exists()


# --------------------------------------------------------------------- the run end to end


def test_a_run_against_a_dead_endpoint_fails_before_any_training(tmp_path, monkeypatch) -> None:
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from tests.fruit import make_task

    monkeypatch.setenv("EA_TEST_KEY", "sk-x")
    data = tmp_path / "fruit.csv"
    make_task(data)
    cfg = RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="m", lm_key_env="EA_TEST_KEY",
                    lm_base_url=f"http://127.0.0.1:{_free_port()}/v1")
    t0 = time.perf_counter()
    with pytest.raises(LMError, match="could not be reached"):
        Pipeline(cfg, tmp_path / "runs" / "dead").run()
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "runs" / "dead" / "ssm").exists()


def test_a_key_in_the_base_url_is_used_but_never_stored(tmp_path, monkeypatch) -> None:
    from ea_core.pipeline import Pipeline
    from ea_core.runconfig import RunConfig
    from ea_core.runs import RunManager
    from tests.fruit import LABELS as FRUIT_LABELS, lm_answer, make_task

    key = "sk-URLKEY-7f3e9a1c5b2d4e6f"
    monkeypatch.delenv("EA_URL_TEST_KEY", raising=False)
    data = tmp_path / "fruit.csv"
    gold = make_task(data)
    with ScriptedServer(gold, labels=FRUIT_LABELS, answer_fn=lm_answer, api_key=key) as srv:
        url = srv.url.replace("http://", f"http://user:{key}@")
        cfg = RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=url,
                        lm_key_env="EA_URL_TEST_KEY", oof_folds=3, concurrency=4, max_lm_rate=0.5,
                        price_in=1.0, price_out=2.0)
        out = tmp_path / "runs" / "url"
        events: list[ProgressEvent] = []
        state = Pipeline(cfg, out, callback=events.append).run()
        assert srv.count > 0 and all(r.headers["authorization"] == f"Bearer {key}" for r in srv.requests)
        assert state.config.lm_base_url == srv.url and state.lm_describe["base_url"] == srv.url
        # the run folder's ledger holds what was paid, answer by answer
        spent = sum(json.loads(line)["usd"] for line in (out / "lm" / "spend.jsonl").read_text().splitlines())
        paid = sum(u["cost_usd"] for u in state.lm_usage.values())
        assert spent == pytest.approx(paid) and spent > 0
        mined = [e.message for e in events if e.stage == "mine" and e.message and "named no label" in e.message]
        assert mined and "failed" in mined[0]
        # a background run: config.json is written without the key
        manager = RunManager(tmp_path / "bg")
        run_id = manager.create(RunConfig(**{**cfg.to_dict(), "lm_base_url": url}), owner="o")
        assert key not in (manager.folder(run_id) / "config.json").read_text()

    hits = [str(p) for root in (tmp_path / "runs", tmp_path / "bg") for p in root.rglob("*")
            if p.is_file() and key.encode() in p.read_bytes()]
    assert hits == []  # not in config.json, summary.json, the bundle, events, the cache or its WAL
