"""Test-wide settings: offline, deterministic, small thread pools (CI has 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Deterministic cuBLAS on a GPU machine (ea_core.process.deterministic_gpu): set before torch uses CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


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


def _fruit_run(root, answer_fn, **settings):
    """A finished fruit run against a scripted LM answering with `answer_fn`: (run folder, server)."""
    from ea_core.runconfig import RunConfig
    from ea_core.runs import execute_run
    from tests.fruit import LABELS, make_task
    from tests.scripted_server import ScriptedServer

    data = root / "fruit.csv"
    gold = make_task(data)
    srv = ScriptedServer(gold, labels=LABELS, answer_fn=answer_fn).start()
    cfg = RunConfig(data=str(data), ssm=["tfidf"], lm="openai", lm_model="test-model", lm_base_url=srv.url,
                    oof_folds=3, concurrency=4, max_lm_rate=0.5, price_in=0.15, price_out=0.6, **settings)
    execute_run(cfg, root / "runs" / "fruit", api_key="sk-local")
    return root / "runs" / "fruit", srv


@pytest.fixture(scope="session")
def fruit_full_run(tmp_path_factory):
    """The fruit run with EA(Full) and the learned router too: (run folder, the scripted server)."""
    from tests.fruit import lm_answer

    folder, srv = _fruit_run(tmp_path_factory.mktemp("fruit_full"), lm_answer, ea_full=True, router="learned")
    yield folder, srv
    srv.close()


@pytest.fixture(scope="session")
def fruit_chance_run(tmp_path_factory):
    """The fruit run against an LM at chance (as the offline default's stand-in): EA keeps the best
    small model alone. (run folder, the scripted server)."""
    from tests.fruit import chance_answer

    folder, srv = _fruit_run(tmp_path_factory.mktemp("fruit_chance"), chance_answer)
    yield folder, srv
    srv.close()
