"""The request log (``serve --log-dir DIR``) and its way back into adaptation.

Every answered input is one JSON line of ``DIR/requests.jsonl``: its text (and second text, in
the bundle's own column names, so the log reads like the training data), the answer, who gave
it, the LM's answer when it was asked, the route, and ``label``: empty until someone says what
the right answer was (``POST /v1/feedback {id, label}``), which appends a feedback line with the
gold label. The file is rotated at a size (``requests.jsonl.1`` is the newest old one).

`dataset_from_log` turns a log folder into a labelled data file for a new run: gold labels where
feedback gave one and, with ``lm_labels``, the LM's answers for the inputs it answered
(distillation), so the next adaptation learns the traffic the LM had to answer. As written,
``requests.jsonl`` also loads directly (``run --data DIR/requests.jsonl``): rows without a label
are dropped with a warning, the feedback lines remain.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Optional

from ea_core.errors import DataError
from ea_core.serve.engine import Routed, ServeInput

LOG_NAME = "requests.jsonl"
#: How many recent answers feedback can find without reading the log files.
RECENT = 100_000


class RequestLog:
    """Appends request and feedback lines to ``folder/requests.jsonl``, rotated at `max_bytes`."""

    def __init__(self, folder: str | Path, *, text_col: str = "text", pair_col: str = "text_pair",
                 image_task: bool = False, max_bytes: int = 64 * 1024 * 1024, keep: int = 10) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOG_NAME
        self.text_col, self.pair_col = text_col or "text", pair_col or "text_pair"
        self.image_task = image_task
        self.max_bytes, self.keep = int(max_bytes), int(keep)
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _input_fields(self, item: ServeInput) -> dict[str, Any]:
        if item.image is not None:
            import hashlib

            digest = hashlib.sha256(item.image).hexdigest()
            rel = f"images/{digest[:2]}/{digest}.img"
            path = self.folder / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(item.image)
            return {"image": rel}
        fields = {self.text_col: item.text}
        if item.pair is not None:
            fields[self.pair_col] = item.pair
        return fields

    def request(self, rid: str, endpoint: str, item: ServeInput, r: Routed) -> None:
        row = {"id": rid, "time": round(time.time(), 3), "kind": "request", "endpoint": endpoint,
               **self._input_fields(item), "label": None, "prediction": r.prediction,
               "answered_by": r.answered_by, "confidence": r.confidence, "lm_reached": r.lm_reached,
               "lm_called": r.lm_called, "lm_answered": r.lm_answered, "cache_hit": r.cache_hit, "lm_label": r.lm_label,
               "lm_confidence": r.lm_confidence, "cost_usd": r.cost_usd, "latency_s": round(r.latency_s, 6),
               "route": json.dumps([[s.stage, s.confidence, s.threshold, s.took] for s in r.stages]),
               "note": r.note}
        self._write(row)
        self._remember(row)

    def _remember(self, row: dict[str, Any]) -> None:
        self._recent[row["id"]] = row
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)

    def find(self, rid: str) -> Optional[dict[str, Any]]:
        """The request line of answer `rid` (recent ones from memory, older ones from the files)."""
        if rid in self._recent:
            return self._recent[rid]
        for row in read_log(self.folder):
            if row.get("id") == rid and row.get("kind") == "request":
                return row
        return None

    def feedback(self, row: dict[str, Any], label: str) -> dict[str, Any]:
        """Append the gold `label` for the answer `row` (as `find` returned it)."""
        keep = ("image",) if "image" in row else tuple(k for k in (self.text_col, self.pair_col) if k in row)
        line = {"id": row["id"], "time": round(time.time(), 3), "kind": "feedback",
                **{k: row[k] for k in keep}, "label": label, "prediction": row.get("prediction"),
                "answered_by": row.get("answered_by"), "lm_label": row.get("lm_label")}
        self._write(line)
        return line

    def _write(self, row: dict[str, Any]) -> None:
        data = (json.dumps(row, ensure_ascii=False) + "\n").encode()
        with self._lock:
            try:
                if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                    self._rotate()
            except OSError:
                pass
            with open(self.path, "ab") as f:
                f.write(data)

    def _rotate(self) -> None:
        oldest = self.folder / f"{LOG_NAME}.{self.keep}"
        if oldest.exists():
            oldest.unlink()
        for i in range(self.keep - 1, 0, -1):
            src = self.folder / f"{LOG_NAME}.{i}"
            if src.exists():
                os.replace(src, self.folder / f"{LOG_NAME}.{i + 1}")
        os.replace(self.path, self.folder / f"{LOG_NAME}.1")


def log_files(folder: str | Path) -> list[Path]:
    """The log's files, oldest first."""
    root = Path(folder)
    rotated = sorted((p for p in root.glob(f"{LOG_NAME}.*") if p.suffix[1:].isdigit()),
                     key=lambda p: int(p.suffix[1:]), reverse=True)
    return rotated + ([root / LOG_NAME] if (root / LOG_NAME).exists() else [])


def read_log(folder: str | Path) -> Iterator[dict[str, Any]]:
    """Every line of a log folder, oldest first (a damaged line is skipped)."""
    for path in log_files(folder):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    yield row


def dataset_from_log(folder: str | Path, out: str | Path, *, lm_labels: bool = False) -> dict[str, int]:
    """Write the labelled inputs of a request log to `out` (JSON lines, the bundle's column names
    plus ``label`` and ``label_source``): gold labels from feedback (the last one given per
    answer) and, with `lm_labels`, the LM's own answers for the inputs it answered and nobody
    labelled. Returns counts per source."""
    if not log_files(folder):
        raise DataError(f"No request log in {folder} (the server writes {LOG_NAME} there with --log-dir).")
    requests: dict[str, dict[str, Any]] = {}
    gold: dict[str, dict[str, Any]] = {}
    for row in read_log(folder):
        rid = row.get("id")
        if not isinstance(rid, str):
            continue
        if row.get("kind") == "feedback" and isinstance(row.get("label"), str):
            gold[rid] = row
        elif row.get("kind") == "request":
            requests[rid] = row
    skip = {"id", "time", "kind", "endpoint", "label", "prediction", "answered_by", "confidence", "lm_reached",
            "lm_called", "lm_answered", "cache_hit", "lm_label", "lm_confidence", "cost_usd", "latency_s", "route",
            "note"}
    counts = {"feedback": 0, "lm": 0}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for rid, row in list(requests.items()) + [(k, v) for k, v in gold.items() if k not in requests]:
            if rid in gold:
                label, source = gold[rid]["label"], "feedback"
                row = {**row, **{k: v for k, v in gold[rid].items() if k not in skip}}
            elif lm_labels and row.get("lm_answered") and isinstance(row.get("lm_label"), str):
                label, source = row["lm_label"], "lm"
            else:
                continue
            fields = {k: v for k, v in row.items() if k not in skip}
            if "image" in fields:
                fields["image"] = str((Path(folder) / fields["image"]).resolve())
            f.write(json.dumps({**fields, "label": label, "label_source": source}, ensure_ascii=False) + "\n")
            counts[source] += 1
    if not any(counts.values()):
        raise DataError(f"The request log in {folder} has no labelled input yet: send gold labels with "
                        "POST /v1/feedback, or use the LM's answers as labels (--lm-labels).")
    return counts

