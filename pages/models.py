"""Small models tab: the catalog as a checklist with size, offline availability and a CPU time
estimate for the loaded data; training, mining and routing settings. A model that needs a download
this server cannot make (offline) says so in its label, a note warns when one is ticked, and Run
refuses it before starting (`ea_core.models.catalog.check_available`).

Thin: the catalog and the estimates are `ea_core.models`'; settings default to the model
classes' own defaults (read from their constructors, not copied).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import gradio as gr

from ea_core.errors import ConfigError
from ea_core.models import EncoderHeadModel, FineTuneModel
from ea_core.models.catalog import model_choices, unavailable_reason
from ea_core.models.estimate import estimate_seconds, format_estimate
from pages.data import current_task
from pages.session import Studio
from pages.ui import Components, note

DEFAULT_SSMS = ["tfidf", "head:minilm"]
#: Ticked when image data is loaded: the packaged pretrained CNN and a small CNN trained from scratch.
DEFAULT_IMAGE_SSMS = ["head:efficientnet_lite0", "finetune:tiny_cnn"]
FORM_KEYS = ("ssm", "head_epochs", "finetune_epochs", "max_length", "oof_folds", "mining", "assm", "ea_full",
             "calibrate", "max_lm_rate", "probe_lm", "router", "router_labels")
SIZES_WHEN_UNKNOWN = (2000, 1000)  # train, val + test: the demo's default sample


def _default(cls: type, name: str) -> Any:
    return inspect.signature(cls.__init__).parameters[name].default


def build() -> Components:
    c: Components = {}
    labels, table = checklist(*SIZES_WHEN_UNKNOWN, settings={}, modality="text")
    with gr.Row(equal_height=False):
        with gr.Column(scale=6, min_width=340):
            c["ssm"] = gr.CheckboxGroup(labels, value=DEFAULT_SSMS, label="Small models (SSMs) to train",
                                        info="Ranked by validation accuracy; the best one is augmented. Times are "
                                             "CPU estimates for the loaded data: training, predicting and the "
                                             "out-of-fold refits for mining.", elem_id="ssm-choices")
            c["ssm_note"] = gr.HTML(ticked_note(DEFAULT_SSMS), elem_id="ssm-note")
        with gr.Column(scale=5, min_width=300):
            with gr.Accordion("Training", open=True):
                with gr.Row():
                    c["head_epochs"] = gr.Number(_default(EncoderHeadModel, "epochs"), precision=0, minimum=1,
                                                 label="head: max epochs (early stopping)", min_width=120)
                    c["finetune_epochs"] = gr.Number(_default(FineTuneModel, "epochs"), precision=0, minimum=1,
                                                     label="finetune: epochs", min_width=120)
                c["max_length"] = gr.Slider(32, 512, value=_default(FineTuneModel, "max_length"), step=16,
                                            label="Max tokens per input (head and finetune)")
            with gr.Accordion("Mining and the augmented layer", open=True):
                c["oof_folds"] = gr.Slider(0, 10, value=3, step=1, label="Out-of-fold mining folds (0 = off)",
                                           info="Find the examples the SSMs get wrong with models that did not see "
                                                "them (in-sample, TF-IDF fits its own training data).")
                c["mining"] = gr.Radio([("every SSM is wrong", "all"), ("the top SSM is wrong", "top")], value="all",
                                       label="Send a training example to the LM when")
                c["assm"] = gr.Radio([("the top SSM", "top"), ("each SSM", "each")], value="top",
                                     label="Augment (fine-tune on the underfit examples)")
                c["ea_full"] = gr.Checkbox(False, label="Also run EA(Full): LM answers for every training example")
            with gr.Accordion("Routing", open=True):
                c["calibrate"] = gr.Checkbox(True, label="Calibrate confidences (temperature scaling on validation)")
                c["max_lm_rate"] = gr.Slider(0, 1, value=0.3, step=0.01, label="Reported operating point: "
                                             "max share of inputs sent to the LM")
                c["probe_lm"] = gr.Number(0, precision=0, minimum=0, label="Probe the LM on this many unsure "
                                          "training inputs (0 = off)",
                                          info="Extra paid calls (counted in the Large model tab's estimate): "
                                               "more evidence for deciding whether the LM beats the small models "
                                               "where they are unsure, when validation is small.")
                c["router"] = gr.Radio([("the paper's cascade only", "cascade"),
                                        ("also a learned router (extra results row)", "learned")], value="cascade",
                                       label="Router",
                                       info="Learned: a classifier trained on the LM answers mining paid for decides "
                                            "what to send to the LM; shown beside the cascade (ea_learned).")
                c["router_labels"] = gr.Number(0, precision=0, minimum=0,
                                               label="Learned router: ask the LM about this many random training "
                                                     "inputs (0 = off)",
                                               info="Extra paid calls (counted in the Large model tab's estimate): "
                                                    "the router also learns where the LM is wrong and the small model "
                                                    "right; with 200 it gained 0.6-1.1 points where the LM was better "
                                                    "on part of the data (see the README).")
    # The whole page's width: every column in view, the description wrapped.
    c["catalog"] = gr.Dataframe(catalog_frame(table), label="Catalog", interactive=False, wrap=True, max_height=320,
                                column_widths=CATALOG_WIDTHS, elem_id="ssm-catalog", elem_classes=["ea-table"])
    return c


def ssm_settings(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    max_length = int(values["max_length"])
    return {"head": {"epochs": int(values["head_epochs"]), "max_length": max_length},
            "finetune": {"epochs": int(values["finetune_epochs"]), "max_length": max_length}}


def settings_of(values: dict[str, Any]) -> dict[str, Any]:
    """The small-model part of a RunConfig from the form."""
    specs = list(values["ssm"] or [])
    if not specs:
        raise ConfigError("Tick at least one small model in the Small models tab.")
    return {"ssm": specs, "ssm_settings": ssm_settings(values), "oof_folds": int(values["oof_folds"]),
            "mining": values["mining"], "assm": values["assm"], "ea_full": bool(values["ea_full"]),
            "calibrate": bool(values["calibrate"]), "max_lm_rate": float(values["max_lm_rate"]),
            "probe_lm": int(values.get("probe_lm") or 0), "router": values.get("router") or "cascade",
            "router_labels": int(values.get("router_labels") or 0) if values.get("router") == "learned" else 0}


def checklist(n_train: int, n_eval: int, settings: dict[str, dict[str, Any]], oof_folds: int = 0,
              mean_chars: Optional[float] = None, n_val: Optional[int] = None,
              modality: str = "text") -> tuple[list[tuple[str, str]], list[list[str]]]:
    """(checkbox choices, catalog table rows) for this data's modality, with estimates for its size."""
    choices, rows = [], []
    for ch in model_choices(modality):
        # The form's head / finetune settings are the text models'; image models keep their own defaults.
        est = estimate_seconds(ch.spec, n_train, n_eval, oof_folds=oof_folds,
                               settings=settings.get(ch.kind) if ch.modality == "text" else None,
                               mean_chars=mean_chars, n_val=n_val)
        where = ch.availability
        time_text = "-" if ch.unavailable else format_estimate(est)
        choices.append((f"{ch.spec} · {ch.params} · {where}" + ("" if ch.unavailable else f" · {time_text}"),
                        ch.spec))
        rows.append([ch.spec, ch.display_name, ch.params, where, time_text, ch.description])
    return choices, rows


def ticked_note(specs: Optional[list[str]]) -> str:
    """A warning for each ticked model that cannot be built here now (Run refuses them)."""
    problems = [r for r in (unavailable_reason(s) for s in specs or []) if r]
    if not problems:
        return ""
    return note("Run will refuse: " + "; ".join(problems) + ". Untick it, or run where the hub can be reached.",
                "warn")


def on_ticked(specs: Optional[list[str]]) -> str:
    return ticked_note(specs)


def refresh(studio: Studio, tab: Components, request: gr.Request, *values: Any) -> dict[Any, Any]:
    """Re-estimate the checklist for the loaded data and the current settings. The list follows
    the data: image architectures for images, text models otherwise; ticks that no longer apply
    are replaced by that modality's defaults."""
    form = dict(zip(FORM_KEYS, values))
    task = current_task(studio.session(request))
    if task is None:
        n_train, n_eval, n_val, mean_chars, modality = *SIZES_WHEN_UNKNOWN, None, None, "text"
    else:
        n_train, n_eval, n_val = max(len(task.train), 1), len(task.val) + len(task.test), len(task.val)
        sample = task.train.texts[:500]
        mean_chars = None if task.is_image else sum(map(len, sample)) / max(len(sample), 1)
        modality = task.modality
    choices, rows = checklist(n_train, n_eval, ssm_settings(form), int(form["oof_folds"] or 0), mean_chars, n_val,
                              modality)
    valid = {spec for _, spec in choices}
    given = list(form["ssm"] or [])
    ticked = [spec for spec in given if spec in valid]
    if not ticked:
        ticked = [spec for spec in (DEFAULT_IMAGE_SSMS if modality == "image" else DEFAULT_SSMS) if spec in valid]
    # The ticks are set only when they must change: this also runs when a restored setup changes a
    # setting, and its inputs may then predate the restored ticks, which must not be overwritten.
    ssm = gr.update(choices=choices) if ticked == given else gr.update(choices=choices, value=ticked)
    return {tab["ssm"]: ssm, tab["catalog"]: catalog_frame(rows), tab["ssm_note"]: ticked_note(ticked)}


CATALOG_HEADERS = ["spec", "model", "size", "availability", "CPU time (est.)", "description"]
#: Every column in view in the tab's half of a 1280 px page; the description wraps.
CATALOG_WIDTHS = ["14%", "16%", "9%", "17%", "10%", "34%"]


def catalog_frame(rows: list[list[str]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=CATALOG_HEADERS)
