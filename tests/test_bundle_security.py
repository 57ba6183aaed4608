"""A bundle is data from someone else: it never chooses where the LM is called or which secret
is sent, it cannot reach outside its folder, its labels are checked against its models, and a
tampered one is a message naming the file (exit 2), never a traceback.

Bundles here are real: the fruit run's export (TF-IDF SSM, ASSM, scripted LM on 127.0.0.1) and a
head:minilm model exported on its own; the LM endpoints are scripted servers that record every
request's headers and body.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ea_core.bundle import BUNDLE_JSON, export_bundle, load_bundle, plan_bundle_lm, read_bundle_meta
from ea_core.cli import main
from ea_core.errors import ConfigError
from ea_core.inputs import spreadsheet_safe, write_predictions
from ea_core.llm.urls import strip_userinfo, userinfo_secret
from ea_core.splits import Split
from ea_core.system import AdaptedSystem, Predictions, SystemStage
from ea_core.tuning import NEVER_TAKES
from tests.fruit import LABELS
from tests.scripted_server import ScriptedServer
from tests.tampered_bundles import expected_file, make_tampered_bundles, variant_names

ROOT = Path(__file__).resolve().parents[1]
CANARY = "CANARY-8d1e5f0a-never-send-me"
TEXTS = ["apple fresh pie item 1", "banana market box item 2", "cherry juice bowl item 3",
         "apple tree seed item 4", "banana salad today item 5", "cherry pie fresh item 6"]


def predict(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m ea_core predict ...` with OPENAI_API_KEY and the canary under our control."""
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "SECRET_CANARY")}
    return subprocess.run([sys.executable, "-m", "ea_core", "predict", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**base, "SECRET_CANARY": CANARY, **(env or {})}, timeout=300)


def edit_bundle(folder: Path, fn) -> Path:
    meta = json.loads((folder / BUNDLE_JSON).read_text())
    fn(meta)
    (folder / BUNDLE_JSON).write_text(json.dumps(meta, indent=2))
    return folder


@pytest.fixture(scope="module")
def good(fruit_run) -> Path:
    """The fruit run's bundle (stages tfidf -> assm:tfidf -> lm); copy it before changing it."""
    return fruit_run[1] / "bundle"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "new.csv"
    path.write_text("text\n" + "\n".join(TEXTS) + "\n")
    return path


@pytest.fixture(scope="module")
def head_bundle(tmp_path_factory, fruit_run) -> Path:
    """A head:minilm model (the packaged encoder, offline) trained on fruit texts, exported alone."""
    from ea_core.models import make_model

    root = tmp_path_factory.mktemp("head_bundle")
    with open(fruit_run[0].parent / "fruit.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:90]
    split = Split([r["text"] for r in rows], np.array([LABELS.index(r["label"]) for r in rows]))
    model = make_model("head:minilm", cache_dir=str(root / "exporter-cache"), hidden=16, epochs=5, seed=0)
    model.fit(split, None, LABELS)
    model.save(root / "saved")
    return export_bundle(root / "bundle", labels=LABELS, stages=[
        {"name": "head:minilm", "threshold": 0.5, "folder": root / "saved", "temperature": 1.0}])


# ------------------------------------------------------------------ the bundle never picks the endpoint or key


@pytest.fixture
def evil(good, tmp_path):
    """A bundle naming `key_env: SECRET_CANARY` and its own endpoint (a scripted server that
    records headers); every input goes to the LM stage."""
    srv = ScriptedServer(labels=LABELS, answer_fn=lambda req: "a").start()
    folder = shutil.copytree(good, tmp_path / "evil")

    def poison(meta):
        meta["lm"].update(base_url=srv.url, key_env="SECRET_CANARY")
        for stage in meta["stages"]:
            if not stage.get("lm"):
                stage["threshold"] = NEVER_TAKES
    edit_bundle(folder, poison)
    yield srv, folder
    srv.close()


def leaked(srv: ScriptedServer, secret: str) -> bool:
    return any(secret in json.dumps(r.headers) or secret in json.dumps(r.body) for r in srv.requests)


def test_a_bundle_endpoint_is_shown_not_called(evil, inputs, tmp_path):
    srv, folder = evil
    res = predict("--bundle", str(folder), "--input", str(inputs), "--output", str(tmp_path / "p.csv"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"exported against {srv.url}" in res.stderr and "--lm-base-url" in res.stderr
    assert srv.count == 0 and not (tmp_path / "p.csv").exists()


def test_the_users_url_is_called_with_the_standard_key_never_the_bundles_variable(evil, inputs, tmp_path):
    srv, folder = evil
    res = predict("--bundle", str(folder), "--input", str(inputs), "--output", str(tmp_path / "p.csv"),
                  "--lm-base-url", srv.url, env={"OPENAI_API_KEY": "sk-users-own-key"})
    assert res.returncode == 0, res.stderr
    assert f"at {srv.url} (key from $OPENAI_API_KEY)" in res.stderr
    assert srv.count == len(TEXTS)
    assert {r.headers.get("authorization") for r in srv.requests} == {"Bearer sk-users-own-key"}
    assert not leaked(srv, CANARY)


def test_trusting_the_bundle_endpoint_still_never_sends_its_variable(evil, inputs, tmp_path):
    srv, folder = evil
    res = predict("--bundle", str(folder), "--input", str(inputs), "--output", str(tmp_path / "p.csv"),
                  "--trust-bundle-endpoint")
    assert res.returncode == 0, res.stderr
    assert srv.count == len(TEXTS) and not leaked(srv, CANARY)


def test_a_key_in_a_bundles_url_is_dropped(evil, inputs, tmp_path):
    srv, folder = evil
    secret = "CANARY2-in-userinfo"
    edit_bundle(folder, lambda m: m["lm"].update(base_url=srv.url.replace("http://", f"http://user:{secret}@")))
    assert secret not in json.dumps(read_bundle_meta(folder))  # not even shown
    res = predict("--bundle", str(folder), "--input", str(inputs), "--output", str(tmp_path / "p.csv"),
                  "--trust-bundle-endpoint")
    assert res.returncode == 0, res.stderr
    assert secret not in res.stderr + res.stdout
    assert srv.count == len(TEXTS) and not leaked(srv, secret) and not leaked(srv, CANARY)


@pytest.mark.slow
def test_the_good_bundle_predicts_at_the_users_endpoint(good, inputs, fruit_run, tmp_path):
    srv = fruit_run[2]
    res = predict("--bundle", str(good), "--input", str(inputs), "--output", str(tmp_path / "p.csv"),
                  "--lm-base-url", srv.url, "--cache", str(fruit_run[0] / "lm_cache.sqlite"))
    assert res.returncode == 0, res.stderr
    assert "LM stage: model test-model" in res.stderr and "not used" not in res.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == len(TEXTS) + 1


def test_where_a_bundles_lm_is_called():
    where = Path("b") / BUNDLE_JSON
    # The provider's own URL is no choice of the bundle's; the key variable is the standard one.
    plan = plan_bundle_lm({"spec": "deepseek", "base_url": "https://api.deepseek.com/v1", "key_env": "SECRET_CANARY"},
                          where=where)
    assert (plan.base_url, plan.key_env) == ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY")
    assert plan_bundle_lm({"spec": "openai", "model": "m"}, where=where).key_env == "OPENAI_API_KEY"
    assert plan_bundle_lm({"spec": "ollama"}, where=where).key_env == ""  # a local server gets no key
    # Another endpoint: refused unless the user names one or trusts the bundle.
    lm = {"spec": "openai", "model": "m", "base_url": "https://collector.example/v1", "key_env": "SECRET_CANARY"}
    with pytest.raises(ConfigError, match="exported against https://collector.example/v1"):
        plan_bundle_lm(lm, where=where)
    trusted = plan_bundle_lm(lm, where=where, trust_endpoint=True)
    assert (trusted.base_url, trusted.key_env) == ("https://collector.example/v1", "OPENAI_API_KEY")
    mine = plan_bundle_lm(lm, where=where, base_url="http://me:sk-mine@127.0.0.1:8000/v1", key_env="MY_KEY")
    assert (mine.base_url, mine.key_env) == ("http://127.0.0.1:8000/v1", "MY_KEY")
    assert "sk-mine" not in mine.describe() and "collector.example" in mine.describe()


@pytest.mark.parametrize("lm", [{"spec": "local:/etc/passwd"}, {"spec": "local", "model": "/home/someone/model"},
                                {"spec": "local:../../models/x"}, {"spec": "local:~/model"},
                                {"spec": "local:weights.gguf"}, {"spec": "local:C:\\models\\x"},
                                {"spec": "local:tests"}])
def test_a_bundles_local_lm_is_never_a_path(lm, monkeypatch):
    monkeypatch.chdir(ROOT)  # where `tests` is a folder: a relative folder would load in a hub id's place
    with pytest.raises(ConfigError, match="bundle.json.*--lm-local"):
        plan_bundle_lm(lm, where=Path("b") / BUNDLE_JSON)
    # The user may name a path themselves.
    assert plan_bundle_lm(lm, where=Path("b"), local_model="/my/models/x").spec == "local:/my/models/x"


def test_a_bundles_local_lm_may_be_the_packaged_default_or_a_hub_id():
    where = Path("b") / BUNDLE_JSON
    assert plan_bundle_lm({"spec": "local"}, where=where).spec == "local"
    hub = plan_bundle_lm({"spec": "local:HuggingFaceTB/SmolLM2-135M-Instruct"}, where=where)
    assert (hub.spec, hub.base_url, hub.key_env) == ("local:HuggingFaceTB/SmolLM2-135M-Instruct", None, "")


def test_export_writes_no_key_no_key_variable_and_no_userinfo(good, tmp_path):
    lm = {"spec": "openai", "model": "m", "base_url": f"http://user:{CANARY}@127.0.0.1:9/v1",
          "key_env": "SECRET_CANARY", "api_key": CANARY, "describe": {"base_url": f"https://{CANARY}@h/v1"}}
    out = export_bundle(tmp_path / "b", labels=LABELS, lm=lm, stages=[
        {"name": "tfidf", "threshold": 0.5, "folder": good / "models" / "00", "temperature": 1.0},
        {"name": "lm", "threshold": 0.0}])
    text = (out / BUNDLE_JSON).read_text()
    assert CANARY not in text and "SECRET_CANARY" not in text and "key_env" not in text
    assert json.loads(text)["lm"]["base_url"] == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize("url, stripped, secret", [
    ("http://user:KEY@host:8080/v1?x=1", "http://host:8080/v1?x=1", "KEY"),
    ("https://sk-abc%40def@api.example.com/v1", "https://api.example.com/v1", "sk-abc@def"),
    ("http://user:KEY@host:notaport/v1", "http://host:notaport/v1", "KEY"),
    ("https://api.openai.com/v1", "https://api.openai.com/v1", None),
    ("https://host/v1/path@with-at", "https://host/v1/path@with-at", None),
    ("not a url @ all", "not a url @ all", None),
])
def test_userinfo_is_stripped_from_urls(url, stripped, secret):
    assert strip_userinfo(url) == stripped
    assert userinfo_secret(url) == secret


# ------------------------------------------------------------------ paths, labels, tampering


@pytest.fixture(scope="module")
def tampered(good, head_bundle, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tampered")
    made = make_tampered_bundles(good, out / "fruit") + \
        [(f"head/{n}", p) for n, p in make_tampered_bundles(head_bundle, out / "head")]
    return dict(made)


@pytest.mark.parametrize("name", ["folder_parent", "folder_absolute", "folder_dotdot_inside", "symlink_model_dir",
                                  "symlink_weights", "symlink_bundle_json"])
def test_a_bundle_cannot_reach_outside_its_folder(tampered, name):
    with pytest.raises(ConfigError, match="only use files inside its own folder: refused") as err:
        load_bundle(tampered[name], use_lm=False)
    assert expected_file(name) in str(err.value)


def test_reversed_labels_are_refused_with_both_lists(good, tmp_path):
    folder = edit_bundle(shutil.copytree(good, tmp_path / "rev"), lambda m: m.update(labels=m["labels"][::-1]))
    with pytest.raises(ConfigError) as err:
        load_bundle(folder, use_lm=False)
    message = str(err.value)
    assert "model.json" in message and "['a', 'b', 'c']" in message and "['c', 'b', 'a']" in message


def test_a_system_refuses_a_model_trained_on_other_labels(good):
    system = load_bundle(good, use_lm=False)
    model = system.stages[0].model
    with pytest.raises(ConfigError, match="same order"):
        AdaptedSystem(LABELS[::-1], [SystemStage("tfidf", 0.5, model)])
    with pytest.raises(ConfigError, match="temperature"):
        AdaptedSystem(LABELS, [SystemStage("tfidf", 0.5, model, temperature=float("nan"))])


ALL_VARIANTS = variant_names("tfidf", True) + [f"head/{n}" for n in variant_names("head", False)]


def test_there_are_enough_tampered_variants():
    assert len(variant_names("tfidf", True)) >= 20 and len(variant_names("head", False)) >= 20


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_a_tampered_bundle_is_a_message_naming_the_file(tampered, inputs, tmp_path, capsys, name):
    out = tmp_path / "p.csv"
    code = main(["predict", "--bundle", str(tampered[name]), "--input", str(inputs), "--output", str(out), "--no-lm"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error: " in err and "Traceback" not in err
    assert expected_file(name.split("/")[-1]) in err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["threshold_nan_string", "tfidf_coef_shape", "weights_truncated", "fifo_model_json"])
def test_the_cli_exits_2_without_a_traceback(tampered, inputs, tmp_path, name):
    res = predict("--bundle", str(tampered[name]), "--input", str(inputs), "--output", str(tmp_path / "p.csv"),
                  "--no-lm")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert expected_file(name) in res.stderr


def test_a_head_bundle_writes_embeddings_to_the_users_cache_only(head_bundle, tmp_path, monkeypatch):
    folder = shutil.copytree(head_bundle, tmp_path / "head")
    model_json = folder / "models" / "00" / "model.json"
    meta = json.loads(model_json.read_text())
    elsewhere = tmp_path / "elsewhere"
    meta["config"].update(cache_dir=str(elsewhere), device="cuda:7")
    model_json.write_text(json.dumps(meta))
    monkeypatch.setenv("EA_CACHE_DIR", str(tmp_path / "mine"))
    split = Split.from_texts([f"{t} again {i}" for i in range(8) for t in TEXTS])  # >= 32 inputs: cached
    preds = load_bundle(folder).predict(split)
    assert not elsewhere.exists()
    assert list((tmp_path / "mine" / "embeddings").glob("*.npy"))
    assert np.array_equal(preds.pred, load_bundle(head_bundle).predict(split).pred)


# ------------------------------------------------------------------ spreadsheet formulas


def test_csv_output_escapes_formulas_and_jsonl_stays_exact(tmp_path):
    texts = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-3", "@SUM(A1)", "\tx", "\rx", "plain", "a=b"]
    labels = ["-1", "+1"]
    split = Split.from_texts(texts)
    n = len(texts)
    preds = Predictions(np.arange(n) % 2, np.zeros(n, dtype=np.int64), np.full(n, 0.5), ["=stage"])
    write_predictions(str(tmp_path / "p.csv"), split, preds, labels)
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["text", "prediction", "answered_by", "confidence"]
    assert [r[0] for r in rows[1:]] == ["'" + t for t in texts[:6]] + ["plain", "a=b"]
    assert {r[1] for r in rows[1:]} == {"'-1", "'+1"} and {r[2] for r in rows[1:]} == {"'=stage"}
    write_predictions(str(tmp_path / "p.jsonl"), split, preds, labels)
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["text"] for x in lines] == texts and lines[0]["prediction"] == "-1" and lines[0]["confidence"] == 0.5
    assert spreadsheet_safe("ok") == "ok" and spreadsheet_safe("=1") == "'=1"
