"""What EA found: the training examples mining sent to the LM (every small model wrong, out of
fold), with each small model's answer and the LM's. The underfit ones (the LM wrong too) are the
paper's X_train^U, what the augmented models learn; the rest are where the LM fixes the small models.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

from ea_core.inputs import spreadsheet_safe
from ea_core.llm.base import FAILED, UNPARSEABLE
from ea_core.runstate import RunState, mining_probs

#: Which mined examples to list: every one, the underfit ones (LM wrong too), or those the LM fixed.
FILTERS = ("all", "underfit", "lm_fixed")


def _answer(labels: list[str], code: int) -> str:
    if code == UNPARSEABLE:
        return "(no label named)"
    if code == FAILED:
        return "(call failed)"
    return labels[code]


def mined_examples(state: RunState, which: str = "all", limit: Optional[int] = None) -> list[dict[str, Any]]:
    """One row per mined training example: its row, text (and second text), gold label, each small
    model's out-of-fold answer, the LM's answer and the outcome (``underfit``: the LM was wrong too;
    ``lm_fixed``: the LM was right; ``failed``: no answer). Empty before mining has run."""
    if which not in FILTERS:
        raise ValueError(f"which must be one of {', '.join(FILTERS)}")
    mined = state.mining
    if mined is None or not len(mined.candidates):
        return []
    train, labels = state.task.train, state.task.labels
    probs = mining_probs(state)
    rows = []
    for code, i in zip(mined.lm_labels, mined.candidates):
        gold = int(train.labels[i])
        outcome = "failed" if code == FAILED else ("lm_fixed" if code == gold else "underfit")
        if which != "all" and outcome != which:
            continue
        row: dict[str, Any] = {"row": int(i), "text": train.texts[i]}
        if train.pairs is not None:
            row["text_pair"] = train.pairs[i]
        row["gold"] = labels[gold]
        for rec, p in zip(state.ssms, probs):
            row[rec.name] = labels[int(p[i].argmax())]
        row["lm"] = _answer(labels, int(code))
        row["outcome"] = outcome
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def mined_counts(state: RunState) -> dict[str, int]:
    """How many training examples mining sent to the LM, how many it fixed, how many stay underfit."""
    mined = state.mining
    if mined is None:
        return {"sent": 0, "lm_fixed": 0, "underfit": 0, "failed": 0}
    s = mined.summary()
    return {"sent": s["sent_to_lm"], "lm_fixed": s["lm_right_on_candidates"], "underfit": s["underfit"],
            "failed": s["lm_failed"]}


def write_mined_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """The rows as a CSV a spreadsheet shows as text (no cell runs as a formula)."""
    path = Path(path)
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys or ["row"])
        w.writeheader()
        for row in rows:
            w.writerow({k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in row.items()})
    return path
