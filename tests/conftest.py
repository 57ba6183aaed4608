"""Test-wide settings: offline, deterministic, small thread pools (CI has 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def fruit_run(tmp_path_factory):
    """A finished EA run (TF-IDF SSM, scripted LM on 127.0.0.1) on the fruit task, shared by the
    tests that only read a run: (runs folder, run folder, the scripted server, still serving)."""
    from ea_core.runconfig import RunConfig
    from ea_core.runs import execute_run
    from tests.fruit import LABELS, lm_answer, make_task
    from tests.scripted_server import ScriptedServer

    root = tmp_path_factory.mktemp("fruit_run")
    data = root / "fruit.csv"
    gold = make_task(data)
    srv = ScriptedServer(gold, labels=LABELS, answer_fn=lm_answer).start()
    cfg = RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=srv.url,
                    oof_folds=3, concurrency=4, max_lm_rate=0.5, price_in=0.15, price_out=0.6)
    execute_run(cfg, root / "runs" / "fruit", api_key="sk-local")
    yield root / "runs", root / "runs" / "fruit", srv
    srv.close()
