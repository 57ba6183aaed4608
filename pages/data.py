"""Data tab: choose a demo, upload a file (a table, or a ZIP of image class folders) or name a
Hugging Face dataset; pick columns; check. Image data shows a grid of sample images per class.

Thin: reading, column detection, splitting and every error message are `ea_core.data`'s. An
upload is moved out of Gradio's shared file cache at once (nobody else can fetch it by URL) into
the browser owner's store (`ea_core.uploads`): it stays there across reloads and visits, within
the server's quota and age limit, until the owner removes it; a run copies it into its own folder
when it starts. The right-hand panel (summary, class counts, warnings, preview) always describes
the data now chosen: a new choice clears it until Load data, and an error clears it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from ea_core.data import SUPPORTED_FORMATS, describe, inspect_source, load_dataset
from ea_core.errors import DataError, EAError
from ea_core.splits import TaskData
from ea_core.uploads import OwnerStore
from pages import plots
from pages.session import Session, Studio
from pages.ui import NONE, Components, as_plot, cap, col, error_message, fit_widths, friendly, note

DEMO = "demo:tweets"
DEMO_CAPS = (2000, 500, 500)
#: The form's demo choices: the source string and the size caps it starts with (0 = all).
DEMOS = {"demo": (DEMO, DEMO_CAPS), "digits": ("demo:digits", (0, 0, 0))}
SOURCES = [("Demo: tweet sentiment (text, bundled, offline)", "demo"),
           ("Demo: handwritten digits (images, bundled, offline)", "digits"), ("Upload a file", "file"),
           ("Hugging Face dataset (needs internet)", "hf")]
UPLOAD_TYPES = sorted(SUPPORTED_FORMATS) + [".zip"]
PREVIEW_ROWS = 8
GALLERY_PER_CLASS = 4
GALLERY_MIN_SIDE = 64  # tiny images (8x8 digits) are shown enlarged, pixels kept sharp


def build(kept: str = "") -> Components:
    """The tab's components (unwired), by name; ``info`` holds what the loaded data is. `kept`
    says how long and how much of their uploads the server keeps (shown under the file picker)."""
    c: Components = {"info": gr.State(None)}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            c["source"] = gr.Radio(SOURCES, value="demo", label="Dataset", elem_id="data-source")
            c["upload"] = gr.File(label="CSV, TSV, JSONL, JSON or Parquet file, or a ZIP of image class folders "
                                        "(label/image.png)", file_types=UPLOAD_TYPES,
                                  visible=False, height=120, elem_id="data-upload")
            with gr.Row(visible=False, equal_height=False) as c["files_row"]:
                c["data_file"] = gr.Dropdown([], value=None, label="Your uploaded files", scale=4,
                                             allow_custom_value=True,  # a name from a settings file: a message
                                             info=f"Yours only, {kept}." if kept else "Yours only.",
                                             elem_id="data-file")
                c["remove_file"] = gr.Button("Remove this file", size="sm", scale=1, min_width=100,
                                             elem_id="data-remove-file")
            c["hf_name"] = gr.Textbox(label="Hugging Face dataset name", placeholder="e.g. stanfordnlp/imdb or hf:glue:sst2",
                                      visible=False)
            c["message"] = gr.HTML(note("The bundled tweet sentiment demo is selected: press Load data, or go "
                                        "straight to Train & mine.", "info"), elem_id="data-message")
            with gr.Row():
                c["text_col"] = gr.Dropdown([], label="Text column", allow_custom_value=True, min_width=120)
                c["pair_col"] = gr.Dropdown([NONE], value=NONE, label="Second text (pairs)", allow_custom_value=True,
                                            min_width=120)
            with gr.Row():
                c["label_col"] = gr.Dropdown([], label="Label column", allow_custom_value=True, min_width=120)
                c["split_col"] = gr.Dropdown([NONE], value=NONE, label="Split column", allow_custom_value=True,
                                             min_width=120)
            with gr.Accordion("Splits and sizes", open=False):
                with gr.Row():
                    c["val_frac"] = gr.Slider(0.05, 0.4, value=0.15, step=0.01, label="Validation share")
                    c["test_frac"] = gr.Slider(0.05, 0.4, value=0.15, step=0.01, label="Test share")
                with gr.Row():
                    c["max_train"] = gr.Number(DEMO_CAPS[0], label="Max train examples (0 = all)", precision=0,
                                               minimum=0, min_width=100)
                    c["max_val"] = gr.Number(DEMO_CAPS[1], label="Max validation", precision=0, minimum=0, min_width=100)
                    c["max_test"] = gr.Number(DEMO_CAPS[2], label="Max test", precision=0, minimum=0, min_width=100)
                c["seed"] = gr.Number(0, label="Seed (splits, sampling, training)", precision=0)
            c["load"] = gr.Button("Load data", variant="primary")
        with gr.Column(scale=7, min_width=360):
            c["summary"] = gr.Markdown("", elem_id="data-summary")
            c["counts"] = gr.Plot(as_plot(plots.empty("Class counts per split", "Load the data to see its classes.")),
                                  show_label=False, elem_id="data-counts")
            c["warnings"] = gr.HTML("")
            c["gallery"] = gr.Gallery(label="Sample images per class", columns=6, height=260, visible=False,
                                      allow_preview=False, elem_id="data-gallery")
            c["preview"] = gr.Dataframe(label="First rows", interactive=False, wrap=True, max_height=260,
                                        elem_id="data-preview", elem_classes=["ea-table"])
    return c


FORM_KEYS = ("source", "data_file", "hf_name", "text_col", "pair_col", "label_col", "split_col", "val_frac",
             "test_frac", "max_train", "max_val", "max_test", "seed")


def source_of(store: Optional[OwnerStore], source: str, hf_name: str, data_file: Optional[str] = None) -> str:
    """The data source string `ea_core.data` takes for the form's choice (an upload: the owner's
    stored file `data_file`)."""
    if source in DEMOS:
        return DEMOS[source][0]
    if source == "hf":
        name = (hf_name or "").strip()
        if not name:
            raise DataError("Type a Hugging Face dataset name (e.g. stanfordnlp/imdb), or pick the demo.")
        return name if name.startswith("hf:") or "/" in name else f"hf:{name}"
    if store is None:
        raise DataError("The page is still starting: try again in a second.")
    return str(store.path(data_file))


#: The engine's messages name command-line flags; the page names its own fields instead.
FLAG_NAMES = {"--text-pair-col": "'Second text'", "--text-col": "'Text column'", "--label-col": "'Label column'",
              "--split-col": "'Split column'", "--max-train": "'Max train examples'", "--max-val": "'Max validation'",
              "--max-test": "'Max test'", "--val-frac": "'Validation share'", "--test-frac": "'Test share'",
              "text_col=...": "a column", "label_col=...": "a column"}


def _readable(message: str, store: Optional[OwnerStore]) -> str:
    """Error text as the page says it: the uploaded file's name instead of its private server path,
    the page's field names instead of command-line flags."""
    if store is not None:
        message = message.replace(str(store.uploads) + os.sep, "")
    for flag, field_name in FLAG_NAMES.items():
        message = message.replace(flag, field_name)
    return message


def _error_note(err: BaseException, store: Optional[OwnerStore]) -> str:
    return note(_readable(error_message(err), store), "error")


def settings_of(store: Optional[OwnerStore], values: dict[str, Any]) -> dict[str, Any]:
    """The data part of a RunConfig from the form's values (`store`: the browser owner's uploads)."""
    return {
        "data": source_of(store, values["source"], values["hf_name"], values.get("data_file")),
        "text_col": col(values["text_col"]), "text_pair_col": col(values["pair_col"]),
        "label_col": col(values["label_col"]), "split_col": col(values["split_col"]),
        "val_frac": float(values["val_frac"]), "test_frac": float(values["test_frac"]),
        "max_train": cap(values["max_train"]), "max_val": cap(values["max_val"]), "max_test": cap(values["max_test"]),
        "seed": int(values["seed"] or 0),
    }


def source_updates(tab: Components, source: str) -> dict[Any, Any]:
    """What shows for a data source: the upload box and the owner's files, or the dataset name box."""
    return {tab["upload"]: gr.update(visible=source == "file"), tab["files_row"]: gr.update(visible=source == "file"),
            tab["hf_name"]: gr.update(visible=source == "hf")}


def cleared(tab: Components, why: str = "") -> dict[Any, Any]:
    """The right-hand panel emptied (it described other data), with `why` in the summary's place."""
    return {tab["summary"]: why, tab["counts"]: as_plot(plots.empty("Class counts per split",
                                                                     "Load the data to see its classes.")),
            tab["warnings"]: "", tab["preview"]: gr.update(value=None, visible=False),
            tab["gallery"]: gr.update(value=None, visible=False), tab["info"]: None}


@friendly(into="message")
def on_source(studio: Studio, tab: Components, owner: Optional[str], source: str, data_file: Optional[str],
              request: gr.Request) -> dict[Any, Any]:
    """Another source: show its inputs, give a demo its default sizes, and clear what described the
    previous data (Load data shows the new one). For "Upload a file", the owner's files are listed."""
    studio.session(request).forget(lambda k: k == "task")
    caps = DEMOS[source][1] if source in DEMOS else (0, 0, 0)
    out = {**source_updates(tab, source), **cleared(tab, "*Press Load data to see this data.*"),
           tab["max_train"]: gr.update(value=caps[0]), tab["max_val"]: gr.update(value=caps[1]),
           tab["max_test"]: gr.update(value=caps[2])}
    if source == "file":
        store = studio.store(owner) if owner else None
        files = store.files() if store is not None else []
        chosen = data_file if any(f.name == data_file for f in files) else (files[0].name if files else None)
        out[tab["data_file"]] = file_choices(files, chosen)
        if chosen and store is not None:
            out.update(inspected(studio, tab, store, chosen, request))
        else:
            out[tab["message"]] = note("Upload a file: CSV, TSV, JSONL, JSON, Parquet, or a ZIP of image class "
                                       "folders.", "info")
    else:
        out[tab["message"]] = note("Press Load data to see it.", "info")
    return out


def on_hf_name(studio: Studio, tab: Components, request: gr.Request) -> dict[Any, Any]:
    """Another dataset name typed: what described the previous data is cleared until Load data."""
    studio.session(request).forget(lambda k: k == "task")
    return cleared(tab, "*Press Load data to see this dataset.*")


def file_choices(files: list[Any], value: Optional[str]) -> Any:
    """The owner's uploads as the file picker's choices."""
    return gr.update(choices=[(f.label(), f.name) for f in files], value=value)


def no_columns(tab: Components) -> dict[Any, Any]:
    """Column pickers with nothing to pick (the file could not be read)."""
    return {tab["text_col"]: gr.update(choices=[], value=None, label="Text column"),
            tab["pair_col"]: gr.update(choices=[NONE], value=NONE, visible=True),
            tab["label_col"]: gr.update(choices=[], value=None),
            tab["split_col"]: gr.update(choices=[NONE], value=NONE)}


def column_updates(tab: Components, columns: list[str], text: Optional[str], pair: Optional[str],
                   label: Optional[str], split: Optional[str], image: bool = False) -> dict[Any, Any]:
    """The four column pickers; for image data the first names the image column and the
    second-text picker (text pairs only) is hidden."""
    return {tab["text_col"]: gr.update(choices=columns, value=text, label="Image column" if image else "Text column"),
            tab["pair_col"]: gr.update(choices=[NONE] + columns, value=pair or NONE, visible=not image),
            tab["label_col"]: gr.update(choices=columns, value=label),
            tab["split_col"]: gr.update(choices=[NONE] + columns, value=split or NONE)}


def on_upload(studio: Studio, tab: Components, owner: Optional[str], file: Optional[str],
              request: gr.Request) -> dict[Any, Any]:
    """Move the upload into the owner's store, then show its columns and first rows (a file that
    cannot be read is not kept)."""
    if not file:
        return gr.skip()
    src = Path(file)
    try:
        store = studio.store(owner)
        stored = store.add(src, move=True)
    except EAError as err:
        src.unlink(missing_ok=True)
        return {tab["message"]: _error_note(err, None), **no_columns(tab), **cleared(tab),
                tab["upload"]: None}
    finally:
        try:  # Gradio's per-upload folder, if now empty
            os.rmdir(src.parent)
        except OSError:
            pass
    out = inspected(studio, tab, store, stored.name, request)
    if "ea-error" in out[tab["message"]]:  # unreadable: not kept
        store.remove(stored.name)
        stored = None
    return {**out, tab["upload"]: None, tab["data_file"]: file_choices(store.files(), stored and stored.name)}


@friendly(into="message")
def on_pick_file(studio: Studio, tab: Components, owner: Optional[str], name: Optional[str],
                 request: gr.Request) -> dict[Any, Any]:
    """Another of the owner's files picked: its columns and first rows."""
    if not name:
        return {**cleared(tab), **no_columns(tab)}
    return inspected(studio, tab, studio.store(owner), name, request)


@friendly(into="message")
def on_remove_file(studio: Studio, tab: Components, owner: Optional[str], name: Optional[str],
                   request: gr.Request) -> dict[Any, Any]:
    """Delete the picked file from the server; what described it is cleared."""
    store = studio.store(owner)
    if not name or not store.remove(name):
        return {tab["message"]: note("Pick one of your files to remove.", "info")}
    studio.session(request).forget(lambda k: k == "task" or (isinstance(k, tuple) and k[0] == "columns"))
    return {tab["message"]: note(f"Removed {name} from this server ({store.describe_usage()}).", "ok"),
            tab["data_file"]: file_choices(store.files(), None), **no_columns(tab), **cleared(tab)}


def inspected(studio: Studio, tab: Components, store: OwnerStore, name: str, request: gr.Request) -> dict[Any, Any]:
    """A stored file's columns (detected ones picked) and first rows; the rest of the panel cleared
    until Load data. An unreadable file: the message, and every picker and panel cleared."""
    session = studio.session(request)
    session.forget(lambda k: k == "task" or (isinstance(k, tuple) and k[0] == "columns"))
    try:
        path = store.path(name)
        info = inspect_source(str(path), n_preview=PREVIEW_ROWS)
    except EAError as err:
        return {tab["message"]: _error_note(err, store), **no_columns(tab), **cleared(tab)}
    waiting = cleared(tab, f"*{name}: press Load data to split it and see its classes.*")
    if info.modality == "image":
        counts = ", ".join(f"{label} {n:,}" for label, n in info.class_counts.items())
        msg = (f"{name}: {info.n_rows:,} images in {len(info.class_counts)} classes ({counts})"
               + (f"; {info.layout}" if info.layout else "") + ". Press Load data.")
        return {**waiting, tab["message"]: note(msg, "ok"),
                **column_updates(tab, info.columns, info.text_col, None, info.label_col, None, image=True),
                tab["preview"]: _preview(info.preview), tab["gallery"]: gallery(str(path))}
    msg = f"{name}: {info.n_rows:,} rows, columns {', '.join(info.columns)}."
    if info.detect_error:
        msg += " Choose the text and label columns below, then press Load data."
        kind = "warn"
    else:
        msg += " Columns detected: check them, then press Load data."
        kind = "ok"
    return {**waiting, tab["message"]: note(msg, kind),
            **column_updates(tab, info.columns, info.text_col, info.pair_col, info.label_col, info.split_col),
            tab["preview"]: _preview(info.preview)}


def gallery(source: str) -> Any:
    """The preview grid of an image source: a few images per class, captioned with their label."""
    from PIL import Image

    from ea_core.data import image_preview
    from ea_core.imaging import open_image

    try:
        shown = image_preview(source, per_class=GALLERY_PER_CLASS)
    except EAError:
        return gr.update(value=None, visible=False)
    items = []
    for label, images in shown.items():
        for name, data in images:
            img = open_image(data, name)
            if max(img.size) < GALLERY_MIN_SIDE:
                scale = -(-GALLERY_MIN_SIDE // max(img.size))
                img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
            items.append((img, f"{label} · {Path(name).name}"))
    return gr.update(value=items, visible=bool(items))


def _preview(rows: list[dict[str, Any]]) -> Any:
    """The first rows as a table that fits its column: short columns as wide as they need, long
    texts wrapped in what is left (cut at 300 characters)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    if frame.empty or not len(frame.columns):
        return gr.update(value=None, visible=False)
    for c in frame.columns:
        frame[c] = frame[c].map(lambda v: v if not isinstance(v, str) or len(v) < 300 else v[:300] + "…")
    return gr.update(value=frame, visible=True, column_widths=fit_widths(frame))


def load(studio: Studio, tab: Components, owner: Optional[str], request: gr.Request, *values: Any) -> dict[Any, Any]:
    """Load and split with the form's settings: summary, class counts, warnings, preview.

    On a bad file or setting: the message beside the upload, everything the user set kept, and
    what described other data cleared."""
    session = studio.session(request)
    form = dict(zip(FORM_KEYS, values))
    store = studio.store(owner) if owner else None
    session.forget(lambda k: k == "task")
    try:
        settings = settings_of(store, form)
        task = load_dataset(settings["data"], text_col=settings["text_col"], text_pair_col=settings["text_pair_col"],
                            label_col=settings["label_col"], split_col=settings["split_col"],
                            val_frac=settings["val_frac"], test_frac=settings["test_frac"], seed=settings["seed"],
                            max_train=settings["max_train"], max_val=settings["max_val"],
                            max_test=settings["max_test"])
    except EAError as err:
        return {tab["message"]: _error_note(err, store), **cleared(tab)}
    session.cached("task", lambda: task)
    d = describe(task)
    kind = {"image": "images", "pair": "text pairs", "text": "single texts"}[task.modality]
    summary = (f"**{task.name}** · {task.n_labels} labels ({', '.join(task.labels)}) · {kind} · "
               f"train {d['sizes']['train']:,} / validation {d['sizes']['val']:,} / test {d['sizes']['test']:,} "
               "examples · ")
    if task.is_image:
        sizes = ", ".join(list(d.get("image_sizes", {}))[:3])
        summary += f"image sizes {sizes}" + (" …" if d.get("n_image_sizes", 0) > 3 else "")
    else:
        summary += (f"columns: text `{task.text_col}`" + (f", second text `{task.pair_col}`" if task.pair_col else "")
                    + f", label `{task.label_col}`")
    warnings = "".join(note(_readable(w, store), "warn") for w in task.warnings)
    rows = [{"label": task.labels[y], "image" if task.is_image else "text": t}
            for t, y in zip(task.train.texts[:PREVIEW_ROWS], task.train.labels[:PREVIEW_ROWS])]
    if task.is_pair:
        for r, p in zip(rows, task.train.pairs or []):
            r["second text"] = p
    columns = _columns(session, settings["data"]) or [c for c in (task.text_col, task.pair_col, task.label_col) if c]
    return {tab["message"]: note(f"Loaded: {len(task.train) + len(task.val) + len(task.test):,} examples.", "ok"),
            tab["summary"]: summary, tab["counts"]: as_plot(plots.class_counts(d)), tab["warnings"]: warnings,
            tab["preview"]: _preview(rows),
            **column_updates(tab, columns, task.text_col, task.pair_col, task.label_col, col(form["split_col"]),
                             image=task.is_image),
            tab["info"]: {"name": task.name, "labels": task.labels, "sizes": d["sizes"], "pair": task.is_pair,
                          "modality": task.modality},
            tab["gallery"]: gallery(settings["data"]) if task.is_image else gr.update(value=None, visible=False)}


def _columns(session: Session, source: str) -> list[str]:
    """The source's column names (read once per source and session)."""
    def read() -> list[str]:
        try:
            return inspect_source(source, n_preview=0).columns
        except EAError:
            return []  # a Hugging Face dataset: its columns are those load_dataset used
    return session.cached(("columns", source), read)


def current_task(session: Session) -> Optional[TaskData]:
    """The task last loaded in this session, if any."""
    with session.lock:
        return session.cache.get("task")
