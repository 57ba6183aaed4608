"""Measure what a stage costs locally: wall time, peak resident memory and peak GPU memory."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Optional

import psutil


def _cuda() -> Optional[Any]:
    """torch's CUDA module when torch is imported and has started CUDA in this process, else None
    (never imports torch, never starts CUDA)."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None) if torch is not None else None
    try:
        return cuda if cuda is not None and cuda.is_initialized() else None
    except Exception:  # noqa: BLE001  (a torch without CUDA support)
        return None


class ResourceMeter:
    """Context manager sampling this process's RSS in a thread; gives elapsed seconds, peak MB and,
    when the stage used a CUDA GPU, the peak GPU memory torch allocated (`peak_gpu_mb`, the paper's
    Memory column; None when no GPU was used).

    Peak RSS is of the whole process (models loaded earlier count), sampled every 20 ms. The GPU
    peak is torch's own counter (``torch.cuda.max_memory_allocated``, the largest over the visible
    devices), reset when the meter starts: like RSS, one figure per process, so two stages metered
    at once in two threads share it.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.elapsed_s = 0.0
        self.peak_rss_mb = 0.0
        self.peak_gpu_mb: Optional[float] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ResourceMeter":
        cuda = _cuda()
        if cuda is not None:  # CUDA started by an earlier stage: count from here
            for device in range(cuda.device_count()):
                cuda.reset_peak_memory_stats(device)
        self._t0 = time.perf_counter()
        self.peak_rss_mb = self._proc.memory_info().rss / 2**20
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / 2**20)
        self.elapsed_s = time.perf_counter() - self._t0
        cuda = _cuda()  # started before or during the stage
        if cuda is not None:
            self.peak_gpu_mb = max(cuda.max_memory_allocated(d) for d in range(cuda.device_count())) / 2**20
