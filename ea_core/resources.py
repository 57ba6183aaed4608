"""Measure what a stage costs locally: wall time and peak resident memory."""

from __future__ import annotations

import threading
import time
from typing import Optional

import psutil


class ResourceMeter:
    """Context manager sampling this process's RSS in a thread; gives elapsed seconds and peak MB.

    Peak RSS is of the whole process (models loaded earlier count), sampled every 20 ms.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.elapsed_s = 0.0
        self.peak_rss_mb = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._proc = psutil.Process()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_mb = max(self.peak_rss_mb, self._proc.memory_info().rss / 2**20)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "ResourceMeter":
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
