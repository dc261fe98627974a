"""Typed feedback examples shared by every dataset reader, conversion and pipeline.

Conversation form
-----------------
A prompt is a ``Prompt``: a tuple of ``(role, text)`` turns, oldest first, with ``role`` one of
``"system"``, ``"user"`` or ``"assistant"``. The completion(s) of an example are the *next*
assistant turn, so a prompt always ends with a user turn. Turn texts carry no role markers and
no leading/trailing whitespace; rendering them for a model is the job of a chat template
(``fbjax.data.templates``), not of the readers.

For plain-text uses (logging, the HH-RLHF files themselves) the same conversation has one
canonical string form, Anthropic's transcript form::

    "\\n\\nHuman: <user text>\\n\\nAssistant: <assistant text>\\n\\nHuman: ...\\n\\nAssistant:"

``render_transcript`` writes it (ending with the open ``"\\n\\nAssistant:"`` the completion
follows) and ``parse_transcript`` reads it back. A system turn renders as ``"\\n\\nSystem: ..."``.

Every example has a ``meta`` mapping of JSON scalars (str, int, float, bool, None) recording
where it came from (at least ``source``, ``file`` and ``line``) plus dataset-specific ids and
labels. Treat it as read-only; it is excluded from hashing so examples stay hashable.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

USER = "user"
ASSISTANT = "assistant"
SYSTEM = "system"
ROLES = (SYSTEM, USER, ASSISTANT)

Turn = tuple[str, str]
Prompt = tuple[Turn, ...]
MetaValue = str | int | float | bool | None

FEEDBACK_KINDS = ("critique", "judgment", "refinement", "rationale", "principle")

_TRANSCRIPT_LABEL = {USER: "Human", ASSISTANT: "Assistant", SYSTEM: "System"}
_LABEL_ROLE = {label: role for role, label in _TRANSCRIPT_LABEL.items()}
# Only markers that open a paragraph count as turn boundaries: HH-RLHF completions often contain
# inline "Human:" text (the model imitating the user) which must stay part of the turn.
_MARKER_RE = re.compile(r"\n\n(Human|Assistant|System):")


def make_prompt(turns: Any) -> Prompt:
    """Validates and freezes ``turns`` (any iterable of (role, text) pairs) into a ``Prompt``."""
    if isinstance(turns, str):
        raise TypeError("a prompt is a sequence of (role, text) turns, not a string")
    out = []
    for i, turn in enumerate(turns):
        if len(turn) != 2:
            raise ValueError(f"turn {i} is not a (role, text) pair: {turn!r}")
        role, text = turn
        if role not in ROLES:
            raise ValueError(f"turn {i} has unknown role {role!r}; expected one of {ROLES}")
        if not isinstance(text, str):
            raise TypeError(f"turn {i} text is {type(text).__name__}, not str")
        out.append((role, text))
    if not out:
        raise ValueError("a prompt needs at least one turn")
    if out[-1][0] != USER:
        raise ValueError(f"a prompt must end with a user turn, got {out[-1][0]!r}")
    return tuple(out)


def user_prompt(text: str) -> Prompt:
    """The one-turn prompt most single-instruction datasets use."""
    return ((USER, text),)


def render_transcript(prompt: Prompt) -> str:
    """The HH-RLHF plain-text form of ``prompt``, ending with the open assistant marker."""
    parts = [f"\n\n{_TRANSCRIPT_LABEL[role]}: {text}" for role, text in prompt]
    return "".join(parts) + "\n\nAssistant:"


def transcript_reply(text: str) -> str:
    """A reply as it follows :func:`render_transcript`'s open ``"Assistant:"``: after one space."""
    return " " + text


def parse_transcript(text: str) -> tuple[Turn, ...]:
    """Splits an HH-RLHF transcript into (role, text) turns, in order.

    The transcript must start (after optional whitespace) with ``"Human:"``. Consecutive turns of
    the same role, which only arise when a model wrote a ``"\\n\\nAssistant:"`` marker inside its
    own reply, are merged back into one turn with the marker kept verbatim in the text, so the
    result always alternates. The trailing open ``"\\n\\nAssistant:"`` (empty text) is kept as
    a final assistant turn with text ``""``; callers that want a ``Prompt`` drop it.

    Raises ``ValueError`` when the text has no leading human turn.
    """
    body = text.lstrip()
    if not body.startswith("Human:"):
        raise ValueError("transcript does not start with 'Human:'")
    body = "\n\n" + body
    pieces = _MARKER_RE.split(body)
    # split() gives ["", label1, text1, label2, text2, ...] because body starts with a marker.
    turns: list[list[str]] = []
    for label, chunk in zip(pieces[1::2], pieces[2::2]):
        role = _LABEL_ROLE[label]
        if turns and turns[-1][0] == role:
            turns[-1][1] += f"\n\n{label}:{chunk}"
        else:
            turns.append([role, chunk])
    return tuple((role, chunk.strip()) for role, chunk in turns)


def _freeze_meta(meta: Mapping[str, Any] | None) -> dict[str, MetaValue]:
    out: dict[str, MetaValue] = {}
    for key, value in (meta or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"meta keys must be str, got {key!r}")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"meta[{key!r}] must be a JSON scalar, got {type(value).__name__}")
        out[key] = value
    return out


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")


def _meta_field() -> Any:
    return dataclasses.field(default_factory=dict, hash=False)


@dataclasses.dataclass(frozen=True)
class PairedExample:
    """A preference pair: ``chosen`` was preferred over ``rejected`` as a reply to ``prompt``.

    ``weight`` scales the pair's loss (1.0 = ordinary pair), e.g. SHP's vote-share confidence.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    weight: float = 1.0
    meta: Mapping[str, MetaValue] = _meta_field()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", make_prompt(self.prompt))
        _check_text("chosen", self.chosen)
        _check_text("rejected", self.rejected)
        weight = float(self.weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be finite and >= 0, got {self.weight!r}")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "meta", _freeze_meta(self.meta))


@dataclasses.dataclass(frozen=True)
class BinaryExample:
    """An unpaired judgment: ``label`` True = desirable (thumbs up), False = undesirable."""

    prompt: Prompt
    completion: str
    label: bool
    meta: Mapping[str, MetaValue] = _meta_field()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", make_prompt(self.prompt))
        _check_text("completion", self.completion)
        if not isinstance(self.label, bool):
            raise TypeError(f"label must be bool, got {type(self.label).__name__}")
        object.__setattr__(self, "meta", _freeze_meta(self.meta))


@dataclasses.dataclass(frozen=True)
class NegativeExample:
    """A reply known to be bad, with no positive counterpart (negative-only feedback)."""

    prompt: Prompt
    completion: str
    meta: Mapping[str, MetaValue] = _meta_field()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", make_prompt(self.prompt))
        _check_text("completion", self.completion)
        object.__setattr__(self, "meta", _freeze_meta(self.meta))


@dataclasses.dataclass(frozen=True)
class RankedExample:
    """Several replies to one prompt, best first; ``scores`` are non-increasing, one per reply."""

    prompt: Prompt
    completions: tuple[str, ...]
    scores: tuple[float, ...]
    meta: Mapping[str, MetaValue] = _meta_field()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", make_prompt(self.prompt))
        completions = tuple(self.completions)
        scores = tuple(float(s) for s in self.scores)
        for i, c in enumerate(completions):
            _check_text(f"completions[{i}]", c)
        if len(completions) != len(scores):
            raise ValueError(f"{len(completions)} completions but {len(scores)} scores")
        if any(b > a for a, b in zip(scores, scores[1:])):
            raise ValueError(f"scores must be best first (non-increasing), got {scores}")
        object.__setattr__(self, "completions", completions)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "meta", _freeze_meta(self.meta))


@dataclasses.dataclass(frozen=True)
class FeedbackExample:
    """Language feedback on one reply.

    ``kind`` says what ``feedback`` is: ``"critique"`` (free-text criticism of the reply),
    ``"judgment"`` (an evaluation tied to a score or aspect), ``"rationale"`` (an annotator's
    reason for a rating) or ``"refinement"`` (an instruction to rewrite). ``refinement`` is an
    improved reply when the dataset has one; ``score`` is the dataset's scalar rating, if any.
    """

    prompt: Prompt
    completion: str
    feedback: str
    kind: str = "critique"
    refinement: str | None = None
    score: float | None = None
    meta: Mapping[str, MetaValue] = _meta_field()

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", make_prompt(self.prompt))
        _check_text("completion", self.completion)
        _check_text("feedback", self.feedback)
        if self.kind not in FEEDBACK_KINDS:
            raise ValueError(f"kind must be one of {FEEDBACK_KINDS}, got {self.kind!r}")
        if self.refinement is not None:
            _check_text("refinement", self.refinement)
        if self.score is not None:
            object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "meta", _freeze_meta(self.meta))


Example = PairedExample | BinaryExample | NegativeExample | RankedExample | FeedbackExample

KIND_OF_CLASS: dict[type, str] = {
    PairedExample: "paired",
    BinaryExample: "binary",
    NegativeExample: "negative",
    RankedExample: "ranked",
    FeedbackExample: "feedback",
}
CLASS_OF_KIND: dict[str, type] = {kind: cls for cls, kind in KIND_OF_CLASS.items()}


def kind_of(example: Example) -> str:
    """``"paired"``, ``"binary"``, ``"negative"``, ``"ranked"`` or ``"feedback"``."""
    return KIND_OF_CLASS[type(example)]
