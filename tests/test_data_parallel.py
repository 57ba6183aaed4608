"""Data-parallel fine-tuning (ea_core.models.parallel): two processes on the CPU (gloo) train to
what one process trains, within float summation order. On a machine with several GPUs the same
code runs one process per GPU (NCCL); that case is not run here.

Slow: each worker process is spawned and imports torch and transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

from ea_core.errors import ModelError
from ea_core.models import make_model
from ea_core.models.parallel import RANK_ENV, processes_for
from ea_core.splits import Split

#: A tiny random BERT without dropout (dropout masks are drawn per process, so they would differ).
TINY = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 128, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}
LABELS = ["neg", "pos"]


def _split(n: int, offset: int = 0) -> Split:
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    texts = [f"{words[(i + offset) % 6]} item {i} {words[(2 * i + offset) % 6]}" for i in range(n)]
    return Split(texts, np.array([int((i + offset) % 6 >= 3) for i in range(n)]))


def test_processes_for_reads_the_setting():
    import torch

    cpu = torch.device("cpu")
    assert processes_for("auto", cpu) == 1 and processes_for(None, cpu) == 1 and processes_for(3, cpu) == 3
    with pytest.raises(ModelError, match="data_parallel"):
        processes_for("many", cpu)
    with pytest.raises(ModelError, match="data_parallel"):
        processes_for(0, cpu)


def test_a_worker_process_never_spawns_again(monkeypatch):
    import torch

    monkeypatch.setenv(RANK_ENV, "0")
    assert processes_for(4, torch.device("cpu")) == 1


@pytest.mark.slow
def test_two_processes_train_what_one_trains():
    train, val, test = _split(60), _split(24, 1), _split(24, 2)
    results = {}
    for n in (1, 2):
        events = []
        model = make_model("finetune:minilm", LABELS, from_config=TINY, epochs=3, batch_size=7, lr=3e-3, seed=0,
                           data_parallel=n, device="cpu", max_batch_tokens=64)
        model.fit(train, val, LABELS, callback=events.append)
        results[n] = (model.predict_proba(test), [h["val_loss"] for h in model.history_], len(events), model)
    (p1, loss1, ev1, m1), (p2, loss2, ev2, m2) = results[1], results[2]
    assert np.allclose(p1, p2, atol=1e-5) and np.allclose(loss1, loss2, rtol=1e-5)
    assert ev1 == ev2 > 0  # progress events came back from the worker
    assert m2.labels_ == LABELS and m2.model_ is not None and len(m2.history_) == len(m1.history_)
    assert min(loss1) < loss1[0] - 0.01  # it did learn something, so the comparison means something
