"""How a task's input is put to a large model, and how its free-text reply is read back.

The prompt is plain data (`PromptTemplate`) so a user can edit it in the UI and it can be saved
with a run. Reading an answer (`parse_answer`) is deliberately strict: a reply maps to a label
only when it names exactly one label (as the whole reply, inside a sentence, or as JSON). A reply
that names none or several is `UNPARSEABLE`; it is never guessed into a label, because a wrong
guess would silently poison the labels the small model learns from.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ea_core.llm.base import UNPARSEABLE
from ea_core.llm.images import estimate_part
from ea_core.splits import ImageInput, Input, Split

#: (text, pair or None, label string), or (ImageInput, None, label string) for an image task.
Example = tuple[Input, Optional[str], str]
#: An OpenAI chat message: its content is a string, or a list of parts when it holds an image.
Message = dict[str, Any]
#: Turns an image into an OpenAI content part (see `ea_core.llm.images`).
ImagePart = Callable[[ImageInput], dict[str, Any]]

DEFAULT_SYSTEM = "You are a careful annotator. You read an input and classify it into exactly one label."
DEFAULT_INSTRUCTION = (
    "Classify the input into exactly one of these labels: {labels}.\n"
    "Reply with the label only, spelled exactly as given."
)
DEFAULT_INPUT_FORMAT = "Text: {text}"
DEFAULT_PAIR_FORMAT = "Text A: {text}\nText B: {pair}"
DEFAULT_IMAGE_FORMAT = "Classify this image."


def image_to_json(image: ImageInput) -> dict[str, str]:
    """An image example as JSON (run state, bundles, saved prompts): its bytes in base64 and its name."""
    return {"image_base64": base64.b64encode(image.data).decode("ascii"), "name": image.name}


def as_input(value: Any) -> Input:
    """An input from its saved form: an `ImageInput` (or its `image_to_json` dict) or a text."""
    if isinstance(value, ImageInput):
        return value
    if isinstance(value, dict) and "image_base64" in value:
        return ImageInput(base64.b64decode(value["image_base64"]), str(value.get("name") or ""))
    return str(value)


def example_to_json(example: Sequence[Any]) -> list[Any]:
    """A few-shot example as a JSON-safe list ``[text or image dict, pair, label]``."""
    x, pair, label = example
    return [image_to_json(x) if isinstance(x, ImageInput) else x, pair, label]


def example_from_json(data: Sequence[Any]) -> Example:
    """The inverse of `example_to_json` (also takes an example that is already one)."""
    x, pair, label = data
    return as_input(x), None if pair is None else str(pair), str(label)


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

    An image input's user turn is a list of two parts: the text `image_format` and the image (as
    the `image_part` given to `render` makes it). Image few-shot examples are image turns too, so a
    vision LM sees each example picture with its label (each adds its image tokens to every call).
    """

    system: str = DEFAULT_SYSTEM
    instruction: str = DEFAULT_INSTRUCTION
    input_format: str = DEFAULT_INPUT_FORMAT
    pair_format: str = DEFAULT_PAIR_FORMAT
    examples: list[Example] = field(default_factory=list)
    max_input_chars: int = 4000
    image_format: str = DEFAULT_IMAGE_FORMAT

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

    def user_content(self, value: Any, pair: Optional[str] = None,
                     image_part: Optional[ImagePart] = None) -> Any:
        """The content of the user turn for one input: a string, or [text part, image part]."""
        value = as_input(value)
        if isinstance(value, ImageInput):
            if image_part is None:
                image_part = estimate_part
            return [{"type": "text", "text": self.image_format}, image_part(value)]
        return self.format_input(value, pair)

    def render(self, text: Input, pair: Optional[str] = None, labels: Sequence[str] = (),
               image_part: Optional[ImagePart] = None) -> list[Message]:
        """Chat messages (OpenAI format) asking the LM to classify one input into `labels`.

        `image_part` turns an image into its content part (a vision provider passes one that
        downscales it); without it an image becomes a reference to its size as it would be sent
        at the default size (`ea_core.llm.images.estimate_part`): enough for estimates, not sendable.
        """
        messages: list[Message] = []
        system = self.system_message(labels)
        if system:
            messages.append({"role": "system", "content": system})
        for ex_text, ex_pair, ex_label in self.examples:
            messages.append({"role": "user", "content": self.user_content(ex_text, ex_pair, image_part)})
            messages.append({"role": "assistant", "content": str(ex_label)})
        messages.append({"role": "user", "content": self.user_content(text, pair, image_part)})
        return messages

    @property
    def has_image_examples(self) -> bool:
        return any(isinstance(as_input(e[0]), ImageInput) for e in self.examples)

    def with_examples(self, examples: Sequence[Example]) -> "PromptTemplate":
        """A copy using `examples` as few-shot turns."""
        data = self.to_dict()
        data["examples"] = [example_to_json(e) for e in examples]
        return PromptTemplate.from_dict(data)

    def to_dict(self, image_data: bool = True) -> dict[str, Any]:
        """The template as JSON-safe data. Image examples hold their bytes in base64
        (`example_to_json`); with ``image_data=False`` only their name and SHA-256 (for describe())."""
        data = asdict(self)
        if image_data:
            data["examples"] = [example_to_json(e) for e in self.examples]
        else:
            data["examples"] = []
            for e in self.examples:
                x = as_input(e[0])
                data["examples"].append([{"image": x.name, "sha256": x.sha256} if isinstance(x, ImageInput) else x,
                                         e[1], e[2]])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptTemplate":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "examples" in known:
            known["examples"] = [example_from_json(e) for e in known["examples"]]
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
