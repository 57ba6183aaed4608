"""Results tab: open a run folder and read its results table and mining summary.

Thin by design: it only reads what `ea_core` wrote (results.json, summary.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

COLUMNS = ["system", "val_accuracy", "test_accuracy", "macro_f1", "lm_call_rate", "train_time_s",
           "peak_rss_mb", "lm_calls", "lm_cost_usd"]


def load_run(folder: str) -> tuple[list[list], str]:
    """Rows of the results table and a short summary, or a readable message."""
    root = Path(folder.strip() or "runs/demo")
    path = root / "results.json"
    if not path.is_file():
        return [], (f"No results in `{root}` yet. Run `python -m ea_core demo --out {root}` "
                    "(or `run`) first; a finished run writes results.json there.")
    rows = json.loads(path.read_text())["rows"]
    table = [[r.get(c) if not isinstance(r.get(c), float) else round(r[c], 4) for c in COLUMNS] for r in rows]
    summary_path = root / "summary.json"
    lines = [f"**Run** `{root}`"]
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        lines.append(f"Task **{s['task']['name']}**, labels {', '.join(s['task']['labels'])}, "
                     f"sizes {s['task']['sizes']}. SSM ranking: {', '.join(s['ranking'])}.")
        if s.get("mining"):
            m = s["mining"]
            lines.append(f"Mining: {m['sent_to_lm']} of {m['n_train']} training examples sent to the LM, "
                         f"{m['underfit']} underfit.")
        lines += [f"Note: {n}" for n in s.get("notes", [])]
    return table, "\n\n".join(lines)


def build() -> dict[str, gr.components.Component]:
    """The tab's components, wired; returns them by name."""
    with gr.Row():
        folder = gr.Textbox(value="runs/demo", label="Run folder", scale=4)
        load = gr.Button("Load", variant="primary", scale=1)
    summary = gr.Markdown()
    table = gr.Dataframe(headers=COLUMNS, label="Results (thresholds tuned on validation, figures on test)",
                         interactive=False)
    gr.on([load.click, folder.submit], load_run, inputs=folder, outputs=[table, summary])
    return {"folder": folder, "load": load, "summary": summary, "table": table}
