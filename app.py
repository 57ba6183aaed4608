"""Easy Adaptation Studio: build the Gradio UI and launch it.

For now the app reads the runs made by the engine (`python -m ea_core demo` / `run`); the full
point-and-click run, live threshold sliders and export tabs come with the UI issue.
"""

from __future__ import annotations

import gradio as gr

from pages import results


def build_app() -> gr.Blocks:
    with gr.Blocks(title="Easy Adaptation Studio") as demo:
        gr.Markdown("# Easy Adaptation Studio\nAdapt a large model to your task without touching its weights.")
        with gr.Tab("Results"):
            results.build()
    return demo


if __name__ == "__main__":
    build_app().launch()
