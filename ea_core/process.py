"""One-time set-up of the process: torch's thread count, and quiet transformers / hub loading.

Why this exists: torch's intra-op thread count and the logging levels and progress-bar switches
of transformers and huggingface_hub are *process-wide*. When library code changed them around
each call (save, change, restore), two jobs in two threads of one server raced: one job's `fit`
changed another's predict speed, and a restore could put back a value another thread had set.
So the library never touches them; each entry point (the CLI, the app, a worker process) calls
`configure_process()` once at start-up, before any model work.

Thread count, measured on a 2-core machine that other processes kept busy (load average 3-4),
training the ``head:minilm`` head on 3,000 demo tweets with cached embeddings (16 epochs):

* 1 torch thread: 2.0-3.9 s per fit (median 2.9 s);
* 2 torch threads: 3.3 s when the cores happened to be free, 10-23 s (up to 37 s in another run)
  when they were not: the head's many tiny ops each wait on an OpenMP barrier whose other thread
  is descheduled. (The head used to get its speed by switching torch to 1 thread inside `fit`.)

Encoding with the frozen MiniLM was no faster with 2 threads on that loaded machine either
(300 tweets: 4.2-6.2 s with 1 thread, 5.5-6.7 s with 2). So pass ``threads=1`` (or set
``OMP_NUM_THREADS=1``) for a process that runs several jobs at once or shares its CPU with other
busy processes; the default (physical cores) suits one job on an otherwise idle machine.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

from ea_core.errors import ConfigError

#: OpenMP threads that wait for work sleep instead of spinning (unless the user set a policy). On 2
#: cores shared with the app's server and browser, spinning threads burnt CPU the other thread of
#: the same run needed: the offline default run took 301 s through the app with spinning, 251 s
#: with passive waiting; alone on the machine the CLI demo took 3:34 vs 3:21 (384 vs 318 CPU
#: seconds). Read when OpenMP starts (torch's first import), so entry points set it before that:
#: `configure_process` does it first thing, and workers get it in their environment.
PASSIVE_WAIT = "PASSIVE"

#: cuBLAS's workspace setting under which its matrix products are deterministic (CUDA >= 10.2).
#: Read when torch first uses cuBLAS, so entry points set it first thing (`configure_process`).
CUBLAS_DETERMINISTIC = ":4096:8"
#: ``EA_DETERMINISTIC=0`` keeps torch's faster nondeterministic GPU kernels.
DETERMINISTIC_ENV = "EA_DETERMINISTIC"

# Serialises concurrent calls of configure_process (it holds no data of its own).
_SETUP_LOCK = threading.Lock()

#: Held by ea_core while transformers builds a model (``from_pretrained``, ``from_config``).
#: Building one swaps process-wide objects for the duration (the ``torch.nn.init`` functions,
#: ``PreTrainedModel.tie_weights`` / ``init_weights``, torch's default dtype) and then puts back
#: what it saw on entry; two builds in two threads can so leave them swapped for good (seen: a
#: later LM loaded with an untied lm_head still on the meta device). So one build at a time.
TRANSFORMERS_BUILD_LOCK = threading.RLock()


def default_threads() -> Optional[int]:
    """The torch thread count `configure_process` picks when not told: None when the user chose
    one through ``OMP_NUM_THREADS`` (torch already honours it), else the physical core count."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001  (psutil missing or unable to read the CPU topology)
        cores = None
    return int(cores or os.cpu_count() or 1)


def configure_process(threads: Optional[int] = None, deterministic: Optional[bool] = None) -> None:
    """Set up this process for EA work; call it once from an entry point, before model work.

    * OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE`` unless set; see `PASSIVE_WAIT`: it only
      takes effect if torch was not imported yet);
    * torch's intra-op threads: `threads` if given, else the physical core count, unless
      ``OMP_NUM_THREADS`` is set (then torch's own choice from it is kept);
    * transformers and huggingface_hub: log errors only, no progress bars (stages never print;
      load failures become ModelErrors instead);
    * the GGUF loader of transformers imports ``tqdm`` directly and so ignores transformers'
      progress-bar switch: its module attribute ``tqdm`` is replaced, once, by transformers' own
      switchable ``transformers.utils.logging.tqdm`` (so it now obeys that switch);
    * seeded GPU fits reproducible (`deterministic_gpu`; `deterministic` None: when a CUDA GPU is
      visible, unless ``EA_DETERMINISTIC=0``), with ``CUBLAS_WORKSPACE_CONFIG`` set (unless set)
      before anything uses CUDA.

    Idempotent: calling it again with the same argument changes nothing. Library code never calls
    it: these are process-wide choices that belong to whoever owns the process.
    """
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"threads must be at least 1, not {threads!r}.")
    with _SETUP_LOCK:
        os.environ.setdefault("OMP_WAIT_POLICY", PASSIVE_WAIT)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
        _set_torch_threads(int(threads) if threads is not None else default_threads())
        deterministic_gpu(deterministic)
        _quiet_hugging_face()


def deterministic_gpu(enable: Optional[bool] = None) -> bool:
    """Make seeded GPU training reproducible, process-wide; return whether it is on.

    `enable` None: on when a CUDA GPU is visible and ``EA_DETERMINISTIC`` is not ``0``. On means
    ``torch.use_deterministic_algorithms(True, warn_only=True)`` (deterministic kernels where torch
    has them; an op without one warns instead of failing), cuDNN's deterministic algorithms and no
    cuDNN autotuning, and ``CUBLAS_WORKSPACE_CONFIG`` set unless it was (it takes effect only if
    torch has not used cuBLAS yet: call this early). The catalog's CNNs avoid the one such op they
    had (adaptive average pooling: `ea_core.models.vision_backbones.deterministic_pooling`), so two
    fits with one seed on one GPU give equal weights; bench/bench_gpu.py checks it. A process-wide
    choice, like the thread count: entry points make it, library code never does.
    """
    import torch

    if enable is None:
        enable = os.environ.get(DETERMINISTIC_ENV, "1").strip() not in ("0", "false", "no") and \
            torch.cuda.is_available()
    if not enable:
        return False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    return True


def _set_torch_threads(threads: Optional[int]) -> None:
    import torch

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _quiet_hugging_face() -> None:
    import huggingface_hub.utils as hub_utils
    import huggingface_hub.utils.logging as hub_logging
    import transformers.utils.logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()
    hub_utils.disable_progress_bars()
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # a transformers without GGUF support: nothing to silence
        return
    if hasattr(gguf_utils, "tqdm"):
        gguf_utils.tqdm = hf_logging.tqdm


def warn_ignored_threads(owner: str, threads: Optional[int]) -> None:
    """Log that a model's or provider's own `threads` setting is no longer applied per call (kept
    so saved configs still load): the thread count is a process-wide `configure_process` choice."""
    if threads is None:
        return
    logging.getLogger("ea_core").warning(
        "%s: threads=%s is ignored; torch's thread count is process-wide, so set it once with "
        "ea_core.process.configure_process(threads=%s) (or OMP_NUM_THREADS) at start-up.",
        owner, threads, threads,
    )


def release_memory() -> None:
    """Give freed memory back to the system: a garbage collection, then glibc's ``malloc_trim``.

    Why: a server's memory rose with every browser session and stayed there after the sessions
    closed although their objects were freed (measured: +200 MB over 10 sessions, all of it back
    after a trim): glibc keeps freed blocks in its arenas for reuse. A process-wide choice like the
    others here: the app calls it when a session ends; library code never does. No-op without glibc.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return
    trim(0)
