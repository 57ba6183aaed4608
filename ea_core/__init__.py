"""Easy Adaptation engine: adapt a large model to a classification task without touching its weights.

Everything here works without a UI: data loading, small models, large-model clients,
underfit mining, routing, tuning, the pipeline and the CLI. The Gradio app is one client.
"""

__version__ = "0.1.0"
