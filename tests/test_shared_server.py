"""The app as a shared server: the login from a file or a variable (never argv), no bind beyond
loopback without one, the endpoints its pages may call, the disk a browser may keep.

The pages' handlers are called as Gradio calls them (a request with a session hash); the LM is a
scripted server on 127.0.0.1, which a server told it listens publicly treats as private.
"""

from __future__ import annotations

import re
import types

import pytest

import app
from ea_core.llm.endpoints import POLICY_ENV, EndpointPolicy
from ea_core.logins import AUTH_ENV, Logins, hash_password
from ea_core.quotas import DiskQuota
from ea_core.runconfig import RunConfig
from pages import lm, results
from pages.session import Studio
from tests.scripted_server import ScriptedServer

REQUEST = types.SimpleNamespace(session_hash="shared-server-test")


def test_logins_come_from_a_file_or_a_variable_hashed_or_not(tmp_path, monkeypatch, capsys):
    hashed = hash_password("correct horse")
    path = tmp_path / "logins"
    path.write_text(f"# the team\nalice:{hashed}\nbob:plain-pw\n")
    path.chmod(0o644)
    args = app.parse_args(["--auth-file", str(path)])
    check = app.login_of(args)
    assert check("alice", "correct horse") and not check("alice", "wrong") and not check("carol", "correct horse")
    assert check("bob", "plain-pw")
    assert "chmod 600" in capsys.readouterr().err  # passwords in clear, readable by others
    monkeypatch.setenv(AUTH_ENV, f"carol:{hash_password('pw3')}")
    check = app.login_of(app.parse_args([]))
    assert check("carol", "pw3") and not check("carol", "pw")
    monkeypatch.delenv(AUTH_ENV)
    assert app.login_of(app.parse_args([])) is None
    # --auth still works, and says that ps shows it.
    assert app.login_of(app.parse_args(["--auth", "dave:pw4"])) == ("dave", "pw4")
    assert "ps shows it" in capsys.readouterr().err
    for bad in ("", "# only a comment\n", "no-colon-here\n"):
        with pytest.raises(Exception, match="login|line"):
            Logins.parse(bad, "f")


def test_listening_beyond_loopback_needs_a_login_unless_insecure(monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(app, "build_app", lambda *a, **kw: launched.append(kw) or (_ for _ in ()).throw(SystemExit))
    monkeypatch.delenv(AUTH_ENV, raising=False)
    assert app.main(["--host", "0.0.0.0"]) == 2
    assert "no login is set" in capsys.readouterr().err and not launched
    monkeypatch.setenv(POLICY_ENV, "")
    with pytest.raises(SystemExit):  # past the check: build_app is reached
        app.main(["--host", "0.0.0.0", "--insecure", "--max-runs", "2", "--disk-quota-mb", "500"])
    kw = launched[-1]
    assert kw["queue"].max_running == 2 and kw["quota"].per_owner_mb == 500
    assert kw["endpoints"].public and kw["endpoints"].restricts  # beyond loopback: public hosts only
    assert EndpointPolicy.from_env().public  # ... for every provider of the server's process too
    with pytest.raises(SystemExit):
        app.main(["--host", "127.0.0.1"])  # a local app needs no login and calls any endpoint
    assert launched[-1]["endpoints"].allow_any


@pytest.fixture
def lm_server():
    srv = ScriptedServer({"I love this!": "positive"}, labels=["positive", "negative"]).start()
    yield srv
    srv.close()


def _lm_form(url: str) -> list:
    values = {"preset": lm.CUSTOM, "base_url": url, "model": "test-model", "price_in": 0, "price_out": 0,
              "free": True, "budget_usd": None, "concurrency": 1, "few_shot": 0, "prompt_system": "",
              "prompt_instruction": "Label: {labels}", "prompt_input": "{text}", "prompt_pair": "{text} {pair}"}
    return [values[k] for k in lm.FORM_KEYS]


def test_the_large_model_tab_says_which_endpoints_and_test_connection_refuses_the_others(tmp_path, lm_server):
    public = Studio(tmp_path / "runs", endpoints=EndpointPolicy.for_server("0.0.0.0"))
    assert "public hosts only" in lm.endpoints_note(public.manager.endpoints)
    shown = lm.run_test(public, "sk-x", REQUEST, *_lm_form(lm_server.url))
    assert "does not call" in shown and "loopback" in shown
    assert lm_server.count == 0 and lm_server.models_requests == 0  # not one request went out
    named = Studio(tmp_path / "runs2", endpoints=EndpointPolicy.for_server("0.0.0.0", [f"127.0.0.1:{lm_server.port}"]))
    shown = lm.run_test(named, "sk-x", REQUEST, *_lm_form(lm_server.url))
    assert "Connected to test-model" in shown and lm_server.count == 1
    local = Studio(tmp_path / "runs3")  # a single-user app: nothing to say, anything goes
    assert lm.endpoints_note(local.manager.endpoints) == ""
    assert "Connected" in lm.run_test(local, "sk-x", REQUEST, *_lm_form(lm_server.url))


def test_the_results_tab_shows_the_disk_used_and_removes_an_ended_run(tmp_path):
    studio = Studio(tmp_path / "runs", quota=DiskQuota(per_owner_mb=1, max_age_days=30))
    tab = {"disk": "disk"}
    cfg = RunConfig(data="x.csv", ssm=["tfidf"], lm="local")
    run_id = studio.manager.create(cfg, "alice")
    (studio.manager.folder(run_id) / "big.bin").write_bytes(b"x" * 600_000)
    shown = results.disk_note(studio, tab, "alice")["disk"]
    assert re.search(r"Disk: 5\d\d KB of 1 MB", shown) and "30 days" in shown
    # A run not yet ended cannot be removed; an ended one can, by its owner only.
    assert "cancel it first" in results.remove_run(studio, tab, "alice", run_id)["disk"]
    status = studio.manager.folder(run_id) / "status.json"
    status.write_text(status.read_text().replace('"queued"', '"cancelled"'))
    assert "No such run" in results.remove_run(studio, tab, "bob", run_id)["disk"]
    assert "removed" in results.remove_run(studio, tab, "alice", run_id)["disk"]
    assert not studio.manager.folder(run_id).exists()
    assert "Disk: 0 KB" in results.disk_note(studio, tab, "alice")["disk"]
    # Uploads kept in the owner's store count too (the store's own measure), and the quota holds:
    # an upload past it is refused, one that fills it leaves no room for a run.
    data = tmp_path / "big.csv"
    data.write_bytes(b"text,label\n" + b"x,y\n" * 300_000)
    with pytest.raises(Exception, match="runs and uploads would take"):
        studio.store("alice").add(data)
    data.write_bytes(b"x" * 2**20)
    studio.store("alice").add(data)
    assert studio.manager.disk_use("alice") == studio.store("alice").usage() == 2**20
    with pytest.raises(Exception, match="remove old runs"):
        studio.manager.create(cfg, "alice")
    studio.manager.create(cfg, "bob")
