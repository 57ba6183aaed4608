"""A tiny three-class task whose hard and underfit examples are known by construction.

Most texts name their class's fruit; "hard" texts name another class's fruit (the TF-IDF SSM gets
them wrong out of fold) and the scripted LM knows the answer except on "dark" ones, where it
answers wrong: those are underfit. Used by the pipeline, run-manager and app tests.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from tests.scripted_server import ScriptedServer

LABELS = ["a", "b", "c"]
FRUIT = {"a": "apple", "b": "banana", "c": "cherry"}


def make_task(path: Path, n: int = 360, seed: int = 0) -> dict[str, str]:
    """Write the CSV; return text -> gold label (what the scripted LM knows)."""
    rng = np.random.default_rng(seed)
    fillers = ["today", "market", "fresh", "bowl", "juice", "salad", "pie", "tree", "seed", "box"]
    gold, lines = {}, ["text,label"]
    for i in range(n):
        label = LABELS[i % 3]
        fruit = FRUIT[LABELS[(i + 1) % 3]] if is_hard(i) else FRUIT[label]
        text = f"{fruit} {' '.join(rng.choice(fillers, 3))} item {i}"
        gold[text] = label
        lines.append(f"{text},{label}")
    path.write_text("\n".join(lines) + "\n")
    return gold


def is_hard(i: int) -> bool:
    """Names another class's fruit: the SSM gets it wrong."""
    return i % 5 == 0


def is_dark(i: int) -> bool:
    """A hard example the LM gets wrong too: underfit."""
    return i % 10 == 0


def item(text: str) -> int:
    return int(re.search(r"item (\d+)", text).group(1))


def calls_per_item(srv: ScriptedServer) -> Counter:
    """How many requests the server received for each input (by its item number)."""
    return Counter(item(r.text) for r in srv.requests)


def lm_answer(req) -> str | None:
    """The scripted LM: right (gold) except on dark examples, where it names the wrong class."""
    i = item(req.text)
    return LABELS[(i + 2) % 3] if is_dark(i) else None




def chance_answer(req) -> str:
    """A scripted LM at chance level (like the offline stand-in on tweets): a fixed random label per input."""
    return LABELS[int(np.random.default_rng(item(req.text)).integers(len(LABELS)))]
