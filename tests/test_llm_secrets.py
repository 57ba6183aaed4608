"""The API key stays in memory: never on disk, in logs, describe(), repr() or error messages."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest

from ea_core.errors import LMError
from ea_core.llm import AnswerCache, make_provider
from ea_core.llm.base import FAILED
from tests.scripted_server import GOLD, INPUTS, LABELS, Fault, ScriptedServer

KEY = "sk-proj-ZZTOPSECRET-4f9a8b7c6d5e3a2b1c0d"


def _files_containing(root: Path, needle: bytes) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle in path.read_bytes():
            hits.append(str(path))
    return hits


def test_key_never_reaches_disk_logs_or_messages(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("EA_TEST_LM_KEY", KEY)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    faults = [
        Fault("400", match="blue car", message=f"Bad request for key {KEY}"),  # a server echoing the key
        Fault("500", times=2),
        Fault("429", times=1, retry_after=0),
    ]
    db = tmp_path / "cache" / "lm.sqlite"
    with ScriptedServer(GOLD, faults=faults, supports_response_format=False) as srv:
        cache = AnswerCache(db)
        p = make_provider("openai", model="test-model", base_url=srv.url, key_env="EA_TEST_LM_KEY", cache=cache)
        answers, usage = p.classify(INPUTS, LABELS)
        assert srv.requests[0].headers["authorization"] == f"Bearer {KEY}"  # the key was really used
        failed = [a for a in answers if a.label == FAILED]
        assert len(failed) == 1 and "Bad request" in failed[0].error
        assert KEY not in failed[0].error and "ZZTOPSECRET" not in failed[0].error

        # a 401 whose message repeats the key
        srv.faults[:] = [Fault("401")]
        with pytest.raises(LMError) as err:
            make_provider("openai", model="test-model", base_url=srv.url, key_env="EA_TEST_LM_KEY").classify(
                [("a new input", None)], LABELS
            )
        assert "ZZTOPSECRET" not in str(err.value) and "401" in str(err.value)

        texts = [repr(p), str(p), repr(vars(p)), json.dumps(p.describe()), repr(answers), repr(usage), caplog.text]
        for text in texts:
            assert "ZZTOPSECRET" not in text
        (tmp_path / "describe.json").write_text(json.dumps(p.describe()))
        (tmp_path / "provider.pkl").write_bytes(pickle.dumps(p))
        (tmp_path / "log.txt").write_text(caplog.text)
        (tmp_path / "answers.json").write_text(json.dumps([a.to_dict() for a in answers]))

        # unpickled: the key comes back from the environment, not from the pickle
        srv.faults.clear()
        clone = pickle.loads((tmp_path / "provider.pkl").read_bytes())
        assert clone.classify(INPUTS[:1], LABELS)[0][0].ok
        assert srv.requests[-1].headers["authorization"] == f"Bearer {KEY}"

        # every file written so far (the SQLite DB and its WAL included) is free of the key
        assert len(cache) == len(INPUTS) - 1
        assert _files_containing(tmp_path, b"ZZTOPSECRET") == []
        cache.close()
        assert _files_containing(tmp_path, b"ZZTOPSECRET") == []


def test_scrub_masks_key_like_strings() -> None:
    p = make_provider("openai", model="m", base_url="https://api.example.com/v1", api_key=KEY)
    assert "ZZTOPSECRET" not in p.scrub(f"Incorrect API key provided: {KEY}")
    assert "ZZTOPSECRET" not in p.scrub(f"Authorization: Bearer {KEY}")
    assert "abcdefgh12345" not in p.scrub("Incorrect API key provided: sk-abcdefgh12345678")
    assert p.scrub("plain message") == "plain message"
