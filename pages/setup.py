"""The setup tabs (Data, Small models, Large model) kept per owner: saved as the user edits them,
shown again when the page reloads, filled from a past run or a settings file.

The setup is the run form's values (`pages.form.KEYS`, never the API key), kept on the server in
the owner's store (`ea_core.uploads.OwnerStore`), so a reload, a reopened browser or a restarted
server shows what the tabs showed; Run always runs what they show. Values set from code never
fire the tabs' ``.input`` listeners, so whatever fills the form also sets what those listeners
would have shown (which inputs are visible, the file picker's choices).
"""

from __future__ import annotations

from typing import Any, Optional

import gradio as gr

from ea_core.errors import EAError
from ea_core.models.catalog import model_choices
from ea_core.opened import OpenedRun
from ea_core.runconfig import RunConfig
from ea_core.uploads import OwnerStore
from pages import data, form, lm
from pages.session import Studio
from pages.ui import Components, error_message, note

#: Components besides the form's fields whose look follows a setup (shown / hidden, choices).
SHOWN = ("upload", "files_row", "local_note", "api_group", "message")


def outputs(ui: Components, restored: Any = None) -> list[Any]:
    """What filling the setup updates: every form field, the components in `SHOWN`, and the
    page's `restored` flag when given."""
    return [ui[k] for k in form.KEYS] + [ui[k] for k in SHOWN] + ([restored] if restored is not None else [])


def visibility(ui: Components, source: Optional[str], preset: Optional[str]) -> dict[Any, Any]:
    """Which inputs show for this data source and LM preset (as their own listeners would set)."""
    local = lm.is_local(preset or lm.LOCAL)
    return {**data.source_updates(ui, source or "demo"), ui["local_note"]: gr.update(visible=local),
            ui["api_group"]: gr.update(visible=not local)}


def _fits(component: Any, value: Any) -> bool:
    """Whether a saved value is one `component` can show (a damaged file is ignored field by field)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(component, gr.Checkbox):
        return isinstance(value, bool)
    if isinstance(component, gr.CheckboxGroup):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if isinstance(component, gr.Slider):
        return number
    if isinstance(component, gr.Number):
        return value is None or number
    return value is None or isinstance(value, str)  # text boxes, dropdowns, radios


def show(ui: Components, values: dict[str, Any], store: Optional[OwnerStore]) -> dict[Any, Any]:
    """Updates that make the setup tabs show `values` (keyed by `form.KEYS`; missing or mistyped keys
    are left as they are): the fields, which inputs show, the owner's files to pick from."""
    out: dict[Any, Any] = {}
    for key in form.KEYS:
        if key not in values or not _fits(ui[key], values[key]):
            continue
        out[ui[key]] = gr.update(value=values[key])
    if "ssm" in values and isinstance(values["ssm"], list):
        # Every modality's choices until the data is loaded (refresh then narrows them to its own).
        choices = list(dict.fromkeys((c.spec for c in model_choices())))
        out[ui["ssm"]] = gr.update(choices=choices, value=[s for s in values["ssm"] if s in choices])
    if "preset" in values and values["preset"] not in {v for _, v in lm.CHOICES}:
        out.pop(ui["preset"], None)
    files = store.files() if store is not None else []
    wanted = values.get("data_file")
    out[ui["data_file"]] = data.file_choices(files, wanted if any(f.name == wanted for f in files) else None)
    if values.get("source") == "file" and wanted and not any(f.name == wanted for f in files):
        out[ui["message"]] = note(f"{wanted} is no longer on this server (removed, or unused longer than the "
                                  "age limit): upload it again.", "warn")
    for component, update in visibility(ui, values.get("source"), values.get("preset")).items():
        out[component] = {**out[component], **update} if component in out else update  # keep a value set above
    return out


def restore(studio: Studio, ui: Components, restored: Any, owner: Optional[str]) -> dict[Any, Any]:
    """Page load: show the setup this owner's page last showed (if any), then allow saving."""
    try:
        store = studio.store(owner)
        saved = store.load_setup()
    except EAError:
        return {restored: True}
    if not saved:
        return {restored: True}
    return {**show(ui, saved, store), restored: True}


def save(studio: Studio, owner: Optional[str], restored: Optional[bool], *values: Any) -> None:
    """Keep what the setup tabs show now (not before the page restored the saved setup: its
    first field updates would overwrite it with the page's defaults)."""
    if not restored or not owner:
        return
    try:
        studio.store(owner).save_setup(dict(zip(form.KEYS, values)))
    except (EAError, OSError):
        pass  # keeping the setup is a convenience: a full disk must not break the page


def from_run(studio: Studio, ui: Components, owner: Optional[str], run_id: Optional[str]) -> dict[Any, Any]:
    """Open a past run: the setup tabs show its settings (the key excepted). An uploaded file comes
    back from the run's own copy into the owner's files if it is no longer there."""
    run = OpenedRun.of_owner(studio.manager, run_id, owner)
    cfg = run.config() if run is not None else None
    if cfg is None:
        return gr.skip()
    message = None
    copy = run.input_file()
    if copy is not None:
        try:
            stored = studio.store(owner).keep(copy)
            cfg = RunConfig.from_dict({**cfg.to_dict(), "data": form.UPLOAD_PREFIX + stored.name})
        except (EAError, OSError) as err:
            message = note(f"This run's data file could not be kept again: {error_message(err)}", "error")
            cfg = RunConfig.from_dict({**cfg.to_dict(), "data": form.UPLOAD_PREFIX + copy.name})
    out = show(ui, form.form_from_config(cfg), studio.store(owner))
    if message:
        out[ui["message"]] = message
    return out


def from_file(studio: Studio, ui: Components, msg: Any, owner: Optional[str], path: Optional[str]) -> dict[Any, Any]:
    """A settings file (Results & export) fills the setup tabs; its uploaded file, if the owner
    still has one of that name, is picked. Any bad file is a message in `msg`, never a traceback."""
    if not path:
        return gr.skip()
    try:
        cfg = form.read_settings(path)
    except Exception as err:  # noqa: BLE001  (whatever the file holds)
        return {msg: note(error_message(err), "error")}
    store = studio.store(owner) if owner else None
    out = show(ui, form.form_from_config(cfg), store)
    warning = form.upload_note(cfg)
    if warning and store is not None and store.find(cfg.data[len(form.UPLOAD_PREFIX):]):
        warning = None  # the owner still has that file: it is picked
    out[msg] = note(warning or "Settings loaded into the Data, Small models and Large model tabs.",
                    "warn" if warning else "ok")
    return out
