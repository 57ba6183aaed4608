"""Micro-batching: inputs of concurrent requests that reach the same small model run as one batch.

A small model's cost per call is mostly fixed (tokenising, a forward pass, a sparse product),
so eight inputs in one call cost little more than one. `MicroBatcher.submit` parks the inputs
of a request; the first parked input starts a short timer (`wait_s`, a few milliseconds), and
when it fires, or `max_batch` inputs wait, everything parked runs as one call of `fn` in a
worker thread, off the event loop. At most `max_running` batches of one model run at once (one
per core the model may use): inputs arriving while they run are parked and go together as soon as
one ends. With batching off every submit is its own
call (the benchmark's baseline).

The wait is only worth it when more requests are on their way: `expected()` (given by the
engine) counts the requests in progress that may still reach this model; once that many have
parked, the batch goes at once, so a lone client never waits for the timer.

While a batch runs, a free slot takes the parked inputs only once as many requests wait as run
(or `max_batch` inputs wait); otherwise they go when a batch ends. Without this rule the first
request back from a finished batch found a free slot and "everyone here" (the others had not
sent their next request yet) and went alone: at 32 clients with two slots the batches averaged
2.5 inputs, and the model spent 8.1 ms of CPU per request instead of 6.7.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable, Optional, Sequence

BatchFn = Callable[[list[Any]], Sequence[Any]]


class MicroBatcher:
    """Runs `fn(items) -> one result per item` on batches gathered from concurrent `submit`s.

    `on_batch(size)` is told each batch's size (for metrics). Must be used from one event loop.
    """

    def __init__(self, fn: BatchFn, executor: Executor, *, wait_s: float = 0.002, max_batch: int = 64,
                 enabled: bool = True, on_batch: Optional[Callable[[int], None]] = None,
                 expected: Optional[Callable[[], int]] = None, max_running: int = 1) -> None:
        self.fn = fn
        self.executor = executor
        self.wait_s = float(wait_s)
        self.max_batch = max(int(max_batch), 1)
        self.enabled = enabled
        self.on_batch = on_batch
        self.expected = expected
        self._parked: list[tuple[Any, asyncio.Future, int]] = []  # (item, future, submit number)
        self._submits = 0
        self._timer: Optional[asyncio.TimerHandle] = None
        self.max_running = max(int(max_running), 1)
        self._running = 0
        self._busy_calls = 0  # requests whose inputs are in a running batch
        self._tasks: set[asyncio.Task] = set()

    def _parked_calls(self) -> int:
        return len({call for _, _, call in self._parked})

    def _all_here(self) -> bool:
        """Every request that may still come has parked (or is running): no reason to wait."""
        return self.expected is not None and self._parked_calls() + self._busy_calls >= self.expected()

    def _ready(self) -> bool:
        """Whether the parked inputs should start a batch now, a slot being free."""
        if len(self._parked) >= self.max_batch:
            return True
        if self._running == 0:
            return self._all_here()
        return self._parked_calls() >= self._busy_calls  # a batch as big as the ones running, or wait for them

    def poke(self) -> None:
        """Re-check after `expected()` fell (a request left before reaching this model)."""
        if self._parked and self._running < self.max_running and self._ready():
            self._flush()

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """The results for `items`, in order (an exception of `fn` is raised here)."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if not self.enabled:
            if self.on_batch is not None:
                self.on_batch(len(items))
            return list(await loop.run_in_executor(self.executor, self.fn, list(items)))
        futures = [loop.create_future() for _ in items]
        self._submits += 1
        self._parked.extend((item, fut, self._submits) for item, fut in zip(items, futures))
        if self._running < self.max_running:
            if self._ready():
                self._flush()
            elif self._running == 0 and self._timer is None:  # (while one runs, its end sends them)
                self._timer = loop.call_later(self.wait_s, self._flush)
        return list(await asyncio.gather(*futures))

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._running < self.max_running and self._parked:
            batch, self._parked = self._parked[: self.max_batch], self._parked[self.max_batch:]
            self._running += 1
            calls = len({call for _, _, call in batch})
            self._busy_calls += calls
            task = asyncio.get_running_loop().create_task(self._run(batch, calls))
            self._tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Any, asyncio.Future, int]], calls: int) -> None:
        loop = asyncio.get_running_loop()
        items = [item for item, _, _ in batch]
        try:
            if self.on_batch is not None:
                self.on_batch(len(items))
            results = await loop.run_in_executor(self.executor, self.fn, items)
            if len(results) != len(items):
                raise RuntimeError(f"a batch of {len(items)} gave {len(results)} results")
        except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, fut, _), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
        finally:
            self._running -= 1
            self._busy_calls -= calls
            if self._parked and (self._running == 0 or self._ready()):  # they waited for a batch to end: go now
                self._flush()
