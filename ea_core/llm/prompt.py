"""How a task's input is put to a large model, and how its free-text reply is read back.

The prompt is plain data (`PromptTemplate`) so a user can edit it in the UI and it can be saved
with a run. Reading an answer (`parse_answer`) is deliberately strict: a reply maps to a label
only when it names exactly one label (as the whole reply, inside a sentence, or as JSON). A reply
that names none or several is `UNPARSEABLE`; it is never guessed into a label, because a wrong
guess would silently poison the labels the small model learns from.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ea_core.llm.base import UNPARSEABLE
from ea_core.splits import Split

Example = tuple[str, Optional[str], str]  # (text, pair or None, label string)
Message = dict[str, str]

DEFAULT_SYSTEM = "You are a careful annotator. You read an input and classify it into exactly one label."
DEFAULT_INSTRUCTION = (
    "Classify the input into exactly one of these labels: {labels}.\n"
    "Reply with the label only, spelled exactly as given."
)
DEFAULT_INPUT_FORMAT = "Text: {text}"
DEFAULT_PAIR_FORMAT = "Text A: {text}\nText B: {pair}"


def _fill(template: str, **values: str) -> str:
    """`str.format`-like filling that leaves other braces (e.g. JSON in an instruction) alone."""
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", value)
    return out


@dataclass
class PromptTemplate:
    """An editable chat prompt for classification.

    The system message is `system` followed by `instruction` (where `{labels}` becomes the
    comma-separated label list). Few-shot `examples` become earlier user/assistant turns, and the
    input itself the last user turn, written with `input_format` (`{text}`) or, for text pairs,
    `pair_format` (`{text}`, `{pair}`). Inputs longer than `max_input_chars` are cut.
    """

    system: str = DEFAULT_SYSTEM
    instruction: str = DEFAULT_INSTRUCTION
    input_format: str = DEFAULT_INPUT_FORMAT
    pair_format: str = DEFAULT_PAIR_FORMAT
    examples: list[Example] = field(default_factory=list)
    max_input_chars: int = 4000

    def format_input(self, text: str, pair: Optional[str] = None) -> str:
        """The user turn for one input."""
        text = str(text)[: self.max_input_chars]
        if pair is None:
            return _fill(self.input_format, text=text)
        return _fill(self.pair_format, text=text, pair=str(pair)[: self.max_input_chars])

    def system_message(self, labels: Sequence[str]) -> str:
        """System text; without labels, ``{labels}`` is left in place (a preview of the template)."""
        instruction = self.instruction
        if labels:
            instruction = _fill(instruction, labels=", ".join(str(lab) for lab in labels))
        return "\n\n".join(part for part in (self.system.strip(), instruction.strip()) if part)

    def render(self, text: str, pair: Optional[str] = None, labels: Sequence[str] = ()) -> list[Message]:
        """Chat messages (OpenAI format) asking the LM to classify one input into `labels`."""
        messages: list[Message] = []
        system = self.system_message(labels)
        if system:
            messages.append({"role": "system", "content": system})
        for ex_text, ex_pair, ex_label in self.examples:
            messages.append({"role": "user", "content": self.format_input(ex_text, ex_pair)})
            messages.append({"role": "assistant", "content": str(ex_label)})
        messages.append({"role": "user", "content": self.format_input(text, pair)})
        return messages

    def with_examples(self, examples: Sequence[Example]) -> "PromptTemplate":
        """A copy using `examples` as few-shot turns."""
        data = self.to_dict()
        data["examples"] = [tuple(e) for e in examples]
        return PromptTemplate.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["examples"] = [list(e) for e in self.examples]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptTemplate":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "examples" in known:
            known["examples"] = [
                (str(e[0]), None if e[1] is None else str(e[1]), str(e[2])) for e in known["examples"]
            ]
        return cls(**known)


def select_example_rows(split: Split, labels: Sequence[str], k: int, seed: int = 0) -> list[int]:
    """The rows of `split` that `select_examples` shows the LM, in prompt order: the LM has seen
    their labels, so a run keeps them out of mining and of the LM's scores."""
    if k <= 0 or len(split) == 0:
        return []
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for idx in range(len(labels)):
        rows = np.flatnonzero(split.labels == idx)
        if len(rows):
            chosen.extend(int(i) for i in rng.choice(rows, size=min(k, len(rows)), replace=False))
    order = rng.permutation(len(chosen))
    return [chosen[int(j)] for j in order]


def select_examples(split: Split, labels: Sequence[str], k: int, seed: int = 0) -> list[Example]:
    """Up to `k` training examples per label, drawn at random (reproducibly with `seed`).

    Examples are shuffled across labels so the prompt does not end on one label's block.
    Labels with fewer than `k` examples give what they have; unlabelled rows (-1) are skipped.
    """
    out: list[Example] = []
    for i in select_example_rows(split, labels, k, seed):
        text, pair = split.input(i)
        out.append((text, pair, str(labels[int(split.labels[i])])))
    return out


# ---------------------------------------------------------------------------------------- parsing

_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_JSON_OBJ = re.compile(r"\{[^{}]*\}", re.S)
_JSON_KEYS = ("label", "answer", "class", "category", "prediction", "sentiment")
_NEGATION = re.compile(r"(?:\bnot|\bno|n't|\bnever|\bneither|\bnor)\s+(?:\w+\s+)?$", re.I)
_STRIP = " \t\r\n\"'`*.,:;!?()[]<>"


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.casefold()).strip()


def _exact(value: str, labels: Sequence[str]) -> Optional[int]:
    """Index of the label `value` spells (ignoring case, spacing, quotes and end punctuation)."""
    v = _norm(value).strip(_STRIP)
    hits = [i for i, lab in enumerate(labels) if _norm(str(lab)).strip(_STRIP) == v]
    return hits[0] if len(set(_norm(str(labels[i])) for i in hits)) == 1 else None


def _label_pattern(label: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in _norm(label).split(" ") if w]
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)", re.I)


def find_label(raw: str, labels: Sequence[str]) -> tuple[int, Optional[tuple[int, int]]]:
    """Like `parse_answer`, also returning the (start, end) span of the label inside `raw` when found."""
    if not labels:
        return UNPARSEABLE, None
    raw = raw or ""
    ends = [m.end() for m in _THINK.finditer(raw)]
    offset = ends[-1] if ends else 0  # only the part after the last reasoning block counts
    text = raw[offset:]
    if "<think>" in text.casefold() or not text.strip():  # unfinished reasoning, or empty
        return UNPARSEABLE, None

    def shift(span: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
        return None if span is None else (span[0] + offset, span[1] + offset)

    # 1. the whole reply is a label
    idx = _exact(text, labels)
    if idx is not None:
        return idx, shift(_span(text, str(labels[idx])))

    # 2. JSON, possibly inside a code fence or a sentence
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text] + _JSON_OBJ.findall(text)
    for cand in candidates:
        try:
            obj = json.loads(cand.strip())
        except (ValueError, TypeError):
            continue
        value: Any = obj
        if isinstance(obj, dict):
            keys = {str(k).casefold(): v for k, v in obj.items()}
            value = next((keys[k] for k in _JSON_KEYS if k in keys), None)
            if value is None and len(obj) == 1:
                value = next(iter(obj.values()))
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            idx = _exact(str(value), labels)
            if idx is None:
                return UNPARSEABLE, None  # valid JSON naming something that is not a label
            return idx, shift(_span(text, str(labels[idx]), after='"'))
        if isinstance(obj, dict):
            return UNPARSEABLE, None

    # 3. labels named inside a sentence, at word boundaries. A match inside a longer label's
    # match ("neutral" inside "not neutral") does not count as naming the shorter label.
    matches: list[tuple[int, int, int]] = []
    for i, lab in enumerate(labels):
        if not _norm(str(lab)):
            continue
        for m in _label_pattern(str(lab)).finditer(text):
            matches.append((m.start(), m.end(), i))
    kept = [
        m
        for m in matches
        if not any(o[0] <= m[0] and m[1] <= o[1] and (o[1] - o[0]) > (m[1] - m[0]) for o in matches)
    ]
    named = {_norm(str(labels[i])) for _, _, i in kept}
    if len(named) != 1:
        return UNPARSEABLE, None
    if any(_NEGATION.search(text[: m[0]]) for m in kept):
        return UNPARSEABLE, None  # "not positive" names a label only to deny it
    start, end, idx = kept[0]
    return idx, shift((start, end))


def _span(raw: str, label: str, after: str = "") -> Optional[tuple[int, int]]:
    """Span of the first whole-word occurrence of `label` in `raw` (after a quote when JSON)."""
    pattern = _label_pattern(label)
    for m in pattern.finditer(raw or ""):
        if not after or (m.start() > 0 and raw[m.start() - 1] == after):
            return m.start(), m.end()
    m = pattern.search(raw or "")
    return (m.start(), m.end()) if m else None


def parse_answer(raw: str, labels: Sequence[str]) -> int:
    """The index of the one label the LM's reply names, or `UNPARSEABLE`.

    Accepted: the label itself (any case, spacing, quotes, trailing period), JSON such as
    ``{"label": "positive"}`` (also in a code fence), or a sentence naming exactly one label at
    word boundaries ("The sentiment is positive."). A label inside a longer label ("neutral" in
    "not neutral") counts only as the longer one; a negated mention ("not positive") makes the
    reply unparseable. Naming no label, several labels, or a JSON
    value that is not a label gives `UNPARSEABLE`. ``<think>...</think>`` blocks are ignored.
    """
    return find_label(raw, labels)[0]
