"""Data-parallel training of ``finetune:`` text models over several processes (one per GPU).

When more than one CUDA GPU is visible, `FineTuneModel.fit` trains in one process per GPU through
Hugging Face Accelerate: each process holds the whole model (Accelerate's ``prepare_model``: DDP),
takes every k-th example of each batch, and the gradients are summed across processes before every
step, so each update is the one a single process would make on the whole batch (the loss is the
batch sum divided by the batch size, as with micro-batches). Validation, early stopping and the
restored best weights come out the same in every process; the first one sends its progress events
and its trained weights back to the caller's process, which continues as if it had trained itself.

Processes are spawned (not forked), so a parent that has already used CUDA or OpenMP is safe; the
inputs travel pickled through a private temporary folder. On a CPU the same code runs with the
gloo backend: that is how the tests check that two processes give one process's result (within
float summation order). ``data_parallel`` (a model setting): ``auto`` (every visible GPU when
there are several, else one process), a number of processes, or 1 (off).
"""

from __future__ import annotations

import os
import pickle
import queue as queue_mod
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ea_core.errors import ModelError
from ea_core.events import CancelToken, ProgressCallback

#: Environment variable set in the worker processes (a fit there must not spawn again).
RANK_ENV = "EA_DATA_PARALLEL_RANK"


@dataclass
class Shard:
    """This process's part of data-parallel training."""

    rank: int
    world: int
    accelerator: Any

    def take(self, batch_idx: Any) -> Any:
        """Every `world`-th example of a batch, from this rank's position (maybe none)."""
        return batch_idx[self.rank::self.world]


def processes_for(setting: Any, device: Any) -> int:
    """How many processes `fit` trains with: the setting's number, or for ``auto`` the visible
    CUDA GPUs when the model trains on CUDA and there are several (inside a worker: 1)."""
    if os.environ.get(RANK_ENV) is not None:
        return 1
    if setting in (None, "auto"):
        import torch

        return torch.cuda.device_count() if getattr(device, "type", "") == "cuda" and \
            torch.cuda.device_count() > 1 else 1
    try:
        n = int(setting)
    except (TypeError, ValueError):
        raise ModelError(f"data_parallel={setting!r}: use 'auto' or a number of processes.") from None
    if n < 1:
        raise ModelError(f"data_parallel={setting!r}: use 'auto' or a number of processes >= 1.")
    return n


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, folder: str, events: Any, use_cuda: bool) -> None:
    """One process of the group: join it, train, and (rank 0) leave the trained state in `folder`."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), **{RANK_ENV: str(rank)})
    threads = None if use_cuda else max(1, (os.cpu_count() or 1) // world)
    if not use_cuda:
        os.environ["ACCELERATE_USE_CPU"] = "true"
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # the cores shared out (Accelerate would say 1)
    import torch
    from accelerate import Accelerator, DistributedDataParallelKwargs

    from ea_core.process import configure_process

    configure_process(threads=threads)
    accelerator = Accelerator(cpu=not use_cuda,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    with open(Path(folder) / "job.pkl", "rb") as fh:
        model, train, val, labels, options = pickle.load(fh)
    if use_cuda:
        torch.cuda.set_device(accelerator.device)
        model.device = str(accelerator.device)
    else:
        model.device = "cpu"

    def send(event: Any) -> None:
        if rank == 0:
            events.put(event)

    model._fit_rank(train, val, labels, Shard(rank, world, accelerator), callback=send, **options)
    accelerator.wait_for_everyone()
    if rank == 0:
        with open(Path(folder) / "result.pkl.tmp", "wb") as fh:
            pickle.dump(model._trained_state(), fh)
        os.replace(Path(folder) / "result.pkl.tmp", Path(folder) / "result.pkl")
    accelerator.wait_for_everyone()
    accelerator.end_training()


def fit_data_parallel(model: Any, train: Any, val: Any, labels: list[str], processes: int, *,
                      callback: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None,
                      **options: Any) -> Any:
    """Train `model` (a `FineTuneModel`) in `processes` spawned processes (one per GPU when
    CUDA is there, else on the CPU with gloo) and load the result into `model`; returns it."""
    import torch
    import torch.multiprocessing as mp

    use_cuda = torch.cuda.is_available() and str(getattr(model, "device", "auto")) != "cpu"
    if use_cuda and processes > torch.cuda.device_count():
        raise ModelError(f"data_parallel={processes} but only {torch.cuda.device_count()} GPU(s) are visible.")
    ctx = mp.get_context("spawn")
    events = ctx.SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="ea-data-parallel-") as folder:
        os.chmod(folder, 0o700)
        with open(Path(folder) / "job.pkl", "wb") as fh:
            pickle.dump((model, train, val, list(labels), options), fh)
        running = mp.start_processes(_worker, args=(processes, _free_port(), folder, events, use_cuda),
                                     nprocs=processes, join=False, start_method="spawn")
        try:
            while True:
                while not events.empty():
                    event = events.get()
                    if callback is not None:
                        callback(event)
                if cancel is not None and cancel.cancelled:
                    for proc in running.processes:
                        proc.terminate()
                    cancel.check()
                try:
                    if running.join(timeout=0.2):
                        break
                except mp.ProcessRaisedException as err:
                    raise ModelError(f"data-parallel training failed in a worker process: "
                                     f"{str(err).strip().splitlines()[-1]}") from None
                except mp.ProcessExitedException as err:
                    raise ModelError(f"a data-parallel worker process ended unexpectedly ({err}).") from None
        except queue_mod.Empty:  # pragma: no cover  (SimpleQueue never raises it)
            pass
        while not events.empty():
            event = events.get()
            if callback is not None:
                callback(event)
        with open(Path(folder) / "result.pkl", "rb") as fh:
            state = pickle.load(fh)
    model._load_trained_state(state)
    return model


__all__ = ["RANK_ENV", "Shard", "fit_data_parallel", "processes_for"]
