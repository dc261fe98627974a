"""Chat templates as typed data: a frozen turn format and a pure renderer to segments.

:class:`ChatTemplate` describes a turn format; :func:`render_chat` turns ``(role, text)`` turns
into typed :class:`~fbjax.data.templates.Segment` s, which :func:`fbjax.data.templates.render`
turns into tokens and a loss mask. Nothing is parsed back out of a rendered string. Markers a
template needs as single tokens (``special_tokens``) are trained into a sentencepiece model
(``train_sentencepiece(user_defined_symbols=...)``) or added to a loaded tokenizer
(``with_added_tokens``); both tokenizer kinds match them literally in text.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from fbjax.data.templates import Segment


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A turn format, as text pieces around each turn.

    Rendering (see :func:`render_chat`) lays out, per turn::

        user:       user_prefix + text + user_suffix + assistant_prefix      (not trainable)
        assistant:  text + assistant_suffix                                  (trainable)
                    turn_separator                                           (not trainable)

    ``assistant_suffix`` is trainable because it is the model's stop marker (Gemma's
    ``<end_of_turn>``); ``assistant_prefix`` is part of the prompt the model is given at
    generation time. ``system_prefix``/``system_suffix`` of ``None`` means the format has no
    system role and the system text is merged into the first user message via ``system_merge``.
    ``eos_between_turns`` reproduces Llama-2, where every finished exchange ends with EOS and the
    next one starts with BOS (as ids, not text). ``special_tokens`` lists the markers that must be
    single tokens: pass them to ``train_sentencepiece(user_defined_symbols=...)`` or
    :meth:`Tokenizer.with_added_tokens`.
    """

    name: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str = ""
    turn_separator: str = ""
    system_prefix: str | None = None
    system_suffix: str | None = None
    system_merge: str = "{system}\n\n{user}"
    eos_between_turns: bool = False
    special_tokens: tuple[str, ...] = ()


LLAMA2 = ChatTemplate(
    name="llama2",
    user_prefix="[INST] ",
    user_suffix=" [/INST]",
    assistant_prefix=" ",
    assistant_suffix=" ",
    system_merge="<<SYS>>\n{system}\n<</SYS>>\n\n{user}",
    eos_between_turns=True,
)

GEMMA = ChatTemplate(
    name="gemma",
    user_prefix="<start_of_turn>user\n",
    user_suffix="<end_of_turn>\n",
    assistant_prefix="<start_of_turn>model\n",
    assistant_suffix="<end_of_turn>",
    turn_separator="\n",
    special_tokens=("<start_of_turn>", "<end_of_turn>"),
)

PLAIN = ChatTemplate(
    name="plain",
    user_prefix="Human: ",
    user_suffix="\n\n",
    assistant_prefix="Assistant: ",
    turn_separator="\n\n",
    system_prefix="",
    system_suffix="\n\n",
)

CHAT_TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (LLAMA2, GEMMA, PLAIN)}


def get_chat_template(name: str) -> ChatTemplate:
    try:
        return CHAT_TEMPLATES[name]
    except KeyError:
        raise ValueError(
            f"unknown chat template {name!r}; known: {sorted(CHAT_TEMPLATES)}"
        ) from None


def render_chat(
    template: ChatTemplate,
    turns: Sequence[tuple[str, str]],
    *,
    add_generation_prompt: bool = False,
) -> tuple[Segment, ...]:
    """Renders ``(role, text)`` turns into segments; assistant turns are the trainable ones.

    Roles: an optional leading ``"system"``, then alternating ``"user"``/``"assistant"``
    starting with ``"user"``. ``add_generation_prompt`` (last turn must be a user turn) ends the
    prompt with the assistant prefix, ready for sampling. Adjacent untrainable text is merged
    into one segment so a prompt is tokenized in one piece. BOS/EOS at the ends are added by
    :func:`fbjax.data.templates.render`, not here.
    """
    turns = list(turns)
    system = None
    if turns and turns[0][0] == "system":
        system = turns.pop(0)[1]
    for i, (role, _) in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"turn {i} has role {role!r}, expected {expected!r} (an optional leading "
                f"'system' turn, then alternating 'user'/'assistant' starting with 'user')"
            )
    if not turns:
        raise ValueError("a chat needs at least one user turn")
    if add_generation_prompt and turns[-1][0] != "user":
        raise ValueError("add_generation_prompt needs the last turn to be a user turn")

    segments: list[Segment] = []
    pending = ""  # untrainable text not yet emitted
    pending_bos = False

    if system is not None and template.system_prefix is not None:
        pending += template.system_prefix + system + (template.system_suffix or "")

    for i, (role, text) in enumerate(turns):
        if role == "user":
            if i == 0 and system is not None and template.system_prefix is None:
                text = template.system_merge.format(system=system, user=text)
            pending += template.user_prefix + text + template.user_suffix
            if i + 1 < len(turns) or add_generation_prompt:
                pending += template.assistant_prefix
        else:
            segments.append(Segment(pending, False, bos=pending_bos))
            pending, pending_bos = "", False
            last = i == len(turns) - 1
            eos = template.eos_between_turns and not last
            segments.append(Segment(text + template.assistant_suffix, True, eos=eos))
            if eos:
                pending_bos = True
            if not last:
                pending += template.turn_separator
    if pending or pending_bos:
        segments.append(Segment(pending, False, bos=pending_bos))
    return tuple(segments)
