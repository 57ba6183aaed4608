"""The setup a newcomer builds survives a reload and a reopen, the Data tab never shows stale
information, and the numbers and words the app shows are honest (issue 17), handler by handler."""

from __future__ import annotations

import html
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest

from ea_core.errors import ConfigError
from ea_core.events import EventKind, ProgressEvent
from ea_core.llm.spec import LMSpec
from ea_core.monitor import RunProgress
from ea_core.opened import OpenedRun
from ea_core.operating_point import HONEST_RULES, choose_operating_point
from ea_core.runconfig import RunConfig
from ea_core.runfolder import write_json
from ea_core.runs import read_status
from pages import data, form, lm, models, plots, setup, train
from pages.session import Studio
from pages.ui import NONE
from tests.fruit import make_task

OWNER = "owner-alice-0123456789abcdefghij"


def request(session: str = "s") -> SimpleNamespace:
    return SimpleNamespace(session_hash=session)


def setup_ui() -> tuple[dict, object]:
    with gr.Blocks():
        ui = {**data.build("kept for 30 days"), **models.build(), **lm.build()}
        restored = gr.State(False)
    return ui, restored


def form_values(ui: dict, **overrides) -> dict:
    values = {k: ui[k].value for k in form.KEYS}
    values.update(overrides)
    return values


def test_the_setup_is_the_owners_saved_as_it_changes_and_shown_after_a_reload(tmp_path):
    studio = Studio(tmp_path / "runs")
    ui, restored = setup_ui()
    make_task(tmp_path / "fruit.csv")
    studio.store(OWNER).add(tmp_path / "fruit.csv")
    shown = form_values(ui, source="file", data_file="fruit.csv", text_col="text", label_col="label", max_train=0,
                        ssm=["tfidf"], oof_folds=2, preset="custom", base_url="http://127.0.0.1:9/v1", model="my-model",
                        free=True, budget_usd=None, max_lm_rate=0.4, prompt_instruction="Pick one of {labels}.")
    ordered = [shown[k] for k in form.KEYS]
    setup.save(studio, OWNER, False, *ordered)  # before the page restored the saved setup: nothing is kept
    assert studio.store(OWNER).load_setup() is None
    setup.save(studio, OWNER, True, *ordered)

    out = setup.restore(studio, ui, restored, OWNER)  # the reloaded page
    assert out[restored] is True
    for key in form.KEYS:
        assert out[ui[key]]["value"] == shown[key], key
    assert out[ui["files_row"]]["visible"] and out[ui["upload"]]["visible"] and not out[ui["hf_name"]]["visible"]
    assert out[ui["api_group"]]["visible"] and not out[ui["local_note"]]["visible"]
    assert [v for _, v in out[ui["data_file"]]["choices"]] == ["fruit.csv"]
    assert setup.restore(studio, ui, restored, "owner-bob-0123456789abcdefghijkl") == {restored: True}

    # Run runs what the tabs show: the owner's file, the columns, the endpoint, the tick "free".
    cfg = form.config_from_form(studio.store(OWNER), shown)
    assert cfg.data == str(studio.store(OWNER).path("fruit.csv")) and cfg.lm_base_url == "http://127.0.0.1:9/v1"
    assert (cfg.price_in, cfg.price_out, cfg.oof_folds, cfg.ssm) == (0.0, 0.0, 2, ["tfidf"])
    assert form.title_of(cfg, shown).startswith("fruit.csv · tfidf")


def test_a_damaged_or_stale_setup_restores_what_it_can(tmp_path):
    studio = Studio(tmp_path / "runs")
    ui, restored = setup_ui()
    studio.store(OWNER).save_setup({"source": "file", "data_file": "gone.csv", "max_train": "many", "seed": 3,
                                    "ssm": ["tfidf", "finetune:tiny_cnn"], "preset": "no-such-preset"})
    out = setup.restore(studio, ui, restored, OWNER)
    assert ui["max_train"] not in out and ui["preset"] not in out and out[ui["seed"]]["value"] == 3
    assert out[ui["ssm"]]["value"] == ["tfidf", "finetune:tiny_cnn"]  # every modality offered until data loads
    assert out[ui["data_file"]]["value"] is None and "gone.csv is no longer on this server" in out[ui["message"]]


def test_opening_a_past_run_fills_the_setup_tabs_and_brings_its_file_back(tmp_path):
    studio = Studio(tmp_path / "runs")
    ui, _ = setup_ui()
    make_task(tmp_path / "fruit.csv")
    cfg = RunConfig(data=str(tmp_path / "fruit.csv"), text_col="text", label_col="label", ssm=["tfidf"],
                    lm="openai", lm_model="test-model", lm_base_url="http://127.0.0.1:9/v1", price_in=0.15,
                    price_out=0.6, max_lm_rate=0.45, few_shot=2)
    run_id = studio.manager.create(cfg, OWNER, title="fruit", data_file=tmp_path / "fruit.csv")
    assert studio.store(OWNER).files() == []  # removed from the owner's files since

    out = setup.from_run(studio, ui, OWNER, run_id)
    shown = {k: out[ui[k]]["value"] for k in form.KEYS if ui[k] in out}
    assert shown["source"] == "file" and shown["data_file"] == "fruit.csv" and shown["ssm"] == ["tfidf"]
    assert (shown["preset"], shown["base_url"], shown["model"]) == ("custom", "http://127.0.0.1:9/v1", "test-model")
    assert (shown["price_in"], shown["price_out"], shown["max_lm_rate"], shown["few_shot"]) == (0.15, 0.6, 0.45, 2)
    assert [f.name for f in studio.store(OWNER).files()] == ["fruit.csv"]  # back from the run's own copy
    assert out[ui["files_row"]]["visible"] and out[ui["api_group"]]["visible"]
    assert setup.from_run(studio, ui, "owner-mallory-0123456789abcdefgh", run_id) is gr.skip() or \
        setup.from_run(studio, ui, "owner-mallory-0123456789abcdefgh", run_id) == gr.skip()
    demo = form.form_from_config(RunConfig(data="demo:digits", ssm=["finetune:tiny_cnn"]))
    assert demo["source"] == "digits"  # the digits demo, not the tweets


def test_no_panel_of_the_data_tab_describes_other_data(tmp_path):
    """A good upload, then a refused ZIP: the message says why, and the pickers, preview, summary,
    counts and warnings no longer describe the first file (no preview with headers 1 2 3)."""
    studio = Studio(tmp_path / "runs")
    ui, _ = setup_ui()
    req = request()
    make_task(tmp_path / "fruit.csv")
    good = data.on_upload(studio, ui, OWNER, str(tmp_path / "fruit.csv"), req)
    assert "Columns detected" in good[ui["message"]] and good[ui["text_col"]]["value"] == "text"
    assert good[ui["preview"]]["visible"] and list(good[ui["preview"]]["value"].columns) == ["text", "label"]
    assert "press Load data" in good[ui["summary"]] and good[ui["warnings"]] == "" and good[ui["info"]] is None

    bad = tmp_path / "photos.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    out = data.on_upload(studio, ui, OWNER, str(bad), req)
    assert "ea-error" in out[ui["message"]] and "photos.zip" in out[ui["message"]]
    assert out[ui["text_col"]]["choices"] == [] and out[ui["text_col"]]["value"] is None
    assert out[ui["label_col"]]["choices"] == [] and out[ui["split_col"]]["value"] == NONE
    assert out[ui["preview"]] == {"__type__": "update", "value": None, "visible": False}
    assert out[ui["summary"]] == "" and out[ui["warnings"]] == "" and out[ui["info"]] is None
    assert not out[ui["gallery"]]["visible"]
    assert [f.name for f in studio.store(OWNER).files()] == ["fruit.csv"]  # the refused file is not kept

    # Another source clears the panel too; a load error clears it and keeps what the user set.
    switched = data.on_source(studio, ui, OWNER, "file", None, req)
    assert switched[ui["data_file"]]["value"] == "fruit.csv" and "press Load data" in switched[ui["summary"]]
    values = form_values(ui, source="file", data_file="fruit.csv", text_col="nope", label_col="label")
    failed = data.load(studio, ui, OWNER, req, *[values[k] for k in data.FORM_KEYS])
    said = html.unescape(failed[ui["message"]])
    assert "Column 'nope' ('Text column') not found in fruit.csv." in said and ui["text_col"] not in failed
    assert str(studio.runs_dir) not in said  # the file's name, never its private path
    assert failed[ui["summary"]] == "" and failed[ui["preview"]]["visible"] is False
    removed = data.on_remove_file(studio, ui, OWNER, "fruit.csv", req)
    assert "Removed fruit.csv" in removed[ui["message"]] and removed[ui["data_file"]]["choices"] == []


def test_a_model_that_needs_a_download_offline_says_so_and_run_refuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    choices, rows = models.checklist(2000, 1000, settings={})
    label = dict((spec, text) for text, spec in choices)
    assert "unavailable offline" in label["head:distilbert"] and "offline" in label["head:minilm"]
    assert next(r for r in rows if r[0] == "head:distilbert")[4] == "-"  # no time for what cannot run
    assert "Run will refuse" in models.ticked_note(["tfidf", "head:distilbert"])
    assert models.ticked_note(["tfidf", "head:minilm"]) == ""
    ui, _ = setup_ui()
    values = form_values(ui, ssm=["tfidf", "head:distilbert"])
    with pytest.raises(ConfigError, match=r"head:distilbert: distilbert-base-uncased .* offline mode"):
        form.config_from_form(Studio(tmp_path / "runs").store(OWNER), values)


def _failed_run(studio: Studio, tmp_path, ssm: list[str], kind: str, state: str = "failed") -> OpenedRun:
    run_id = studio.manager.create(RunConfig(data="demo:tweets", ssm=ssm), OWNER)
    folder = studio.manager.folder(run_id)
    status = read_status(folder)
    status.state, status.message, status.error_kind = state, "it went wrong", kind
    write_json(folder / "status.json", status.to_dict())
    return OpenedRun(studio.manager, run_id)


def test_resume_is_offered_only_when_it_can_succeed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    studio = Studio(tmp_path / "runs")
    offline = _failed_run(studio, tmp_path, ["head:distilbert"], "ModelError")
    assert not offline.can_resume() and "needs a download" in offline.resume_blocker()
    refused = _failed_run(studio, tmp_path, ["tfidf"], "DataError")
    assert not refused.can_resume() and "refused again" in refused.resume_blocker()
    for kind, state in (("LMError", "failed"), ("RunBusy", "failed"), ("", "failed"), ("", "cancelled"),
                        ("", "interrupted")):
        assert _failed_run(studio, tmp_path, ["tfidf"], kind, state).can_resume(), (kind, state)
    with pytest.raises(ConfigError, match="Resume would fail the same way"):
        offline.resume(OWNER)
    line = train.status_html(read_status(offline.folder), blocker=offline.resume_blocker())
    assert "Resume would fail the same way" in line and "change the setup and press Run" in line


def test_money_is_said_as_the_lm_spec_prices_it():
    free_endpoint = LMSpec.parse("openai", model="m", base_url="http://127.0.0.1:8000/v1", price_in=0, price_out=0,
                                 environ={}).price
    assert train.spent_text(free_endpoint, 0.0) == "free (self-hosted)"
    assert train.spent_text(LMSpec.parse("local", environ={}).price, 0.0) == "free (local)"
    unknown = LMSpec.parse("openai", model="m", base_url="http://127.0.0.1:8000/v1", environ={}).price
    assert train.spent_text(unknown, 0.0) == "price unknown"  # a loopback endpoint is not free by itself
    priced = LMSpec.parse("openai", model="gpt-4o-mini", environ={}).price
    assert train.spent_text(priced, 0.0123) == "$0.0123"
    from pages.results import lm_usage_line

    assert lm_usage_line(158, 0.0, free_endpoint) == "LM usage of this run: 158 calls, free (self-hosted)."
    assert "paid calls" in lm_usage_line(158, 0.0123, priced) and "price unknown" in lm_usage_line(3, 0, unknown)


def test_the_event_log_says_each_end_once():
    progress = RunProgress()
    end = dict(stage="lm:test", step=300, total=300, kind=EventKind.LM, lm_stage="test", calls=0, cache_hits=300)
    for _ in range(3):  # all cached at once, then the close of the stage, then a replay of the same end
        progress(ProgressEvent(**end))
    assert [line[10:] for line in progress.log] == ["lm:test: 0 calls, 300 cached, 0 failed, 0 named no label, "
                                                    "$0.0000"]
    progress(ProgressEvent(**{**end, "calls": 12, "cache_hits": 288}))  # resumed: a new end, said again
    assert len(progress.log) == 2


def test_training_curves_have_whole_epochs_and_a_calm_accuracy_axis():
    progress = RunProgress()
    for step, acc in ((2, 0.696), (3, 0.706), (4, 0.701)):
        progress(ProgressEvent(stage="train:head:minilm", step=step, total=10, kind=EventKind.TRAIN,
                               model="head:minilm", loss=1.0 / step, val_accuracy=acc))
    layout = plots.training_curves(progress)["layout"]
    for axis in ("xaxis", "xaxis2"):
        assert layout[axis]["tickformat"] == "d" and layout[axis]["dtick"] == 1 and layout[axis]["range"][0] == 0
    lo, hi = layout["yaxis2"]["range"]
    assert hi - lo >= plots.MIN_ACCURACY_SPAN and lo <= 69.6 and hi >= 70.6
    assert layout["yaxis"]["rangemode"] == "tozero"


@pytest.mark.parametrize("rule", HONEST_RULES)
def test_every_operating_point_rule_says_why_in_plain_words(rule):
    rng = np.random.default_rng(0)
    from ea_core.router import StageOutput

    y = rng.integers(0, 3, 300)
    ssm = StageOutput("ssm", np.where(rng.random(300) < 0.75, y, (y + 1) % 3), rng.random(300))
    lm_stage = StageOutput("lm", rng.integers(0, 3, 300), np.ones(300), is_lm=True)
    chosen = choose_operating_point([ssm, lm_stage], y, {"ssm": [0], "full": [0, 1]}, rule=rule, max_lm_rate=0.3)
    why = chosen.detail["why"]
    assert why.startswith("kept ") and "rule" not in why and "crossfit" not in why and "_" not in why, why


def test_a_settings_file_fills_the_setup_and_picks_the_owners_file(tmp_path):
    studio = Studio(tmp_path / "runs")
    ui, _ = setup_ui()
    with gr.Blocks():
        msg = gr.HTML()
    make_task(tmp_path / "fruit.csv")
    run_folder = tmp_path / "runs" / "r"
    (run_folder / "input").mkdir(parents=True)
    cfg = RunConfig(data=str(run_folder / "input" / "fruit.csv"), ssm=["finetune:tiny_cnn"], lm="ollama",
                    lm_model="llama3", lm_base_url="http://localhost:11434/v1")
    path = form.settings_file(cfg.to_dict(), run_folder, tmp_path / "settings.json")
    out = setup.from_file(studio, ui, msg, OWNER, str(path))
    assert "upload it again" in out[msg] and out[ui["data_file"]]["value"] is None
    studio.store(OWNER).add(tmp_path / "fruit.csv")
    out = setup.from_file(studio, ui, msg, OWNER, str(path))
    assert "Settings loaded" in out[msg] and out[ui["data_file"]]["value"] == "fruit.csv"
    assert out[ui["ssm"]]["value"] == ["finetune:tiny_cnn"] and "finetune:tiny_cnn" in out[ui["ssm"]]["choices"]
    assert out[ui["preset"]]["value"] == "ollama" and out[ui["api_group"]]["visible"]
    (tmp_path / "bad.json").write_text("{not json")
    assert "ea-error" in setup.from_file(studio, ui, msg, OWNER, str(tmp_path / "bad.json"))[msg]


def test_the_upload_limits_are_settings_of_the_app():
    from app import parse_args, shared_server
    from ea_core.uploads import DEFAULT_MAX_AGE_DAYS, DEFAULT_QUOTA_MB, StoreLimits

    assert shared_server(parse_args([]))["uploads"] == StoreLimits(DEFAULT_QUOTA_MB, DEFAULT_MAX_AGE_DAYS)
    limits = shared_server(parse_args(["--upload-quota-mb", "50", "--upload-max-days", "0"]))["uploads"]
    assert limits == StoreLimits(50, 0) and "until you remove them, up to 50 MB per browser" in limits.describe()
    with pytest.raises(ConfigError):
        shared_server(parse_args(["--upload-quota-mb", "-1"]))
