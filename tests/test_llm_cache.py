"""The answer cache: keys, durability across a killed process, threads, stats."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from ea_core.llm.cache import AnswerCache, CachedAnswer, make_key
from tests.scripted_server import LABELS, ScriptedServer, make_inputs, provider_for

REPO = Path(__file__).resolve().parents[1]


def test_key_depends_on_everything_that_shapes_the_answer() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    base = make_key("http://a/v1", "m", msgs, {"t": 0})
    assert base == make_key("http://a/v1", "m", [{"role": "user", "content": "hi"}], {"t": 0})
    assert base != make_key("http://b/v1", "m", msgs, {"t": 0})
    assert base != make_key("http://a/v1", "m2", msgs, {"t": 0})
    assert base != make_key("http://a/v1", "m", [{"role": "user", "content": "hi!"}], {"t": 0})
    assert base != make_key("http://a/v1", "m", msgs, {"t": 0.5})
    assert len(base) == 64


def test_put_get_stats_and_capabilities(tmp_path) -> None:
    path = tmp_path / "sub" / "cache.sqlite"
    cache = AnswerCache(path)
    assert cache.get("nope") is None
    cache.put("k1", CachedAnswer("positive", 0.8, "positive", 10, 2, 0.001, 0.3), endpoint="e", model="m")
    cache.put("k2", CachedAnswer(None, None, "no idea", 11, 3, 0.002, 0.2), endpoint="e", model="m")
    got = cache.get("k1")
    assert got == CachedAnswer("positive", 0.8, "positive", 10, 2, 0.001, 0.3)
    assert cache.get("k2").label_str is None
    assert "k1" in cache and len(cache) == 2
    assert set(cache.get_many(["k1", "k2", "k3"])) == {"k1", "k2"}
    cache.set_capability("e", "m", "structured", False)
    assert cache.get_capability("e", "m", "structured") is False
    assert cache.capabilities("e", "m") == {"structured": False}
    s = cache.stats()
    assert s["entries"] == 2 and s["prompt_tokens"] == 21 and abs(s["cost_usd"] - 0.003) < 1e-12
    assert s["writes"] == 2 and s["hits"] >= 3 and s["misses"] >= 2
    # WAL mode, and readable by another connection (another process) at once
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 2
    con.close()
    cache.close()
    with AnswerCache(path) as again:
        assert again.get("k1").confidence == 0.8
    mem = AnswerCache(":memory:")
    mem.put("a", CachedAnswer("x", None, "x"))
    assert len(mem) == 1


def test_many_threads_share_one_cache(tmp_path) -> None:
    cache = AnswerCache(tmp_path / "c.sqlite")
    other = AnswerCache(tmp_path / "c.sqlite")  # a second connection, as another process would have
    errors: list[BaseException] = []

    def work(w: int, c: AnswerCache) -> None:
        try:
            for i in range(100):
                key = f"{w}-{i}"
                c.put(key, CachedAnswer("positive", None, key))
                assert c.get(key).raw == key
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w, cache if w % 2 else other)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(cache) == 600


CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from ea_core.llm import AnswerCache, make_provider
    url, db = sys.argv[1], sys.argv[2]
    inputs = [(f"sample text number {{i:04d}} end", None) for i in range({n})]
    p = make_provider("openai", model="test-model", base_url=url, api_key="sk-child-key",
                      cache=AnswerCache(db), concurrency=2)
    p.classify(inputs, {labels!r})
    print("finished")
    """
)


def test_answers_survive_a_killed_process(tmp_path) -> None:
    n = 40
    inputs, gold = make_inputs(n)
    db = tmp_path / "lm.sqlite"
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO), n=n, labels=LABELS))
    with ScriptedServer(gold, latency_s=0.05) as srv:
        child = subprocess.Popen([sys.executable, str(script), srv.url, str(db)], cwd=tmp_path,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while srv.responses_sent < 12 and time.time() < deadline and child.poll() is None:
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        sent = srv.responses_sent
        child.wait(10)
        assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
        assert 12 <= sent < n

        kept = len(AnswerCache(db))
        assert sent - 2 <= kept <= sent  # at most the replies in flight (concurrency 2) are lost
        assert kept < n

        # a request the child sent just before dying can still reach the server: let it settle
        settled = -1
        while settled != srv.count:
            settled = srv.count
            time.sleep(0.3)
        # a new provider (as in a new process) knows only what the DB says
        before = srv.count
        answers, usage = provider_for(srv, AnswerCache(db), concurrency=2).classify(inputs, LABELS)
        assert srv.count - before == n - kept  # only the rest is asked
        assert usage.cache_hits == kept and usage.calls == n - kept
        assert [LABELS[a.label] for a in answers] == list(gold.values())
