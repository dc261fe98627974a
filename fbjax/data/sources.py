"""Typed dataset sources: which release, view and split a paper's experiment trains on.

An experiment's ``config.data`` names its data with these frozen dataclasses instead of strings,
so a typo in a subset or split fails when the config is built, not hours into a job. There are
three layers:

* **Sources** read one released dataset through its TFDS builder (``fbjax.data.<dataset>``):
  :class:`HHRLHF`, :class:`UltraFeedback`, :class:`SHP`, :class:`OASST1`, :class:`PKUSafeRLHF`,
  :class:`TLDRComparisons`, :class:`SLF5K`. Each has ``builder()`` (the ``Fbjax*`` builder with
  the right builder config) and ``examples()`` (typed examples of its split, read from the
  release's own files under ``manual_dir``; nothing is ever downloaded).
* **Views** reshape another source's examples with the library's conversions: :class:`Mixture`,
  :class:`PairsAsBinary` (KTO's recipe), :class:`RankedAsPairs`, :class:`LabelNoise` (flipped
  preferences for robust-DPO experiments). :class:`Unavailable` stands for a dataset fbjax has no
  reader for yet; it validates as a config and fails with its reason when read.
* :class:`Dataset` is what a training stage reads: a source, the encoder that turns
  its examples into token groups (``fbjax.data.encode`` / ``fbjax.data.language`` functions, by
  import), the prompt template, and the tokenizer file.

Example::

    data = Dataset(source=Mixture(parts=tuple(HHRLHF(subset=s) for s in hh_rlhf.SUBSETS)),
                   encoder=encode.paired, tokenizer_path="ckpt/tokenizer.model")
    groups = data.load(data.tokenizer())
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from fbjax.data import conversions, encode
from fbjax.data import examples as ex
from fbjax.data.packing import Group
from fbjax.data.reading import MissingFilesError, OnError, ReadConfig, Tally

logger = logging.getLogger("fbjax.data")

# Encoder: (examples, tokenizer, *, prompt_text) -> groups. ``prompt_text`` renders a prompt
# (``Prompt`` turns) as the text the model is conditioned on.
Encoder = Callable[..., list[Group]]


@runtime_checkable
class Source(Protocol):
    """Anything that yields typed feedback examples (``fbjax.data.examples``)."""

    def examples(self) -> list[ex.Example]: ...


def leaves(source: Any) -> tuple[Any, ...]:
    """The dataset sources a (possibly composite) source reads, depth first."""
    children = getattr(source, "parts", None)
    if children is None and hasattr(source, "source"):
        children = (source.source,)
    if children is None:
        return (source,)
    return tuple(leaf for child in children for leaf in leaves(child))


# ----------------------------------------------------------------------------- released datasets


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Released:
    """Shared plumbing: a builder config of one ``Fbjax*`` builder and one of its splits.

    ``manual_dir`` is the root holding the release's own files in the release's own layout
    (each builder's ``MANUAL_DOWNLOAD_INSTRUCTIONS``); ``examples()`` reads them directly with the
    builder's reader and the bad-record policy ``on_error``, and never downloads anything.
    ``data_dir`` is where :func:`fbjax.data.tfds_common.prepare` writes TFDS ``array_record``
    files when a user prepares ``builder()`` (None = the TFDS default).
    """

    split: str = "train"
    manual_dir: str | None = None
    data_dir: str | None = None
    on_error: OnError = OnError.RAISE

    def _builder_class(self) -> type:
        raise NotImplementedError

    def _config_name(self) -> str:
        raise NotImplementedError

    def builder(self):
        """The TFDS builder for this source (not prepared; constructing it reads nothing)."""
        return self._builder_class()(config=self._config_name(), data_dir=self.data_dir,
                                     on_error=self.on_error)

    def splits(self) -> tuple[str, ...]:
        """The splits the builder writes for this source's builder config."""
        builder = self.builder()
        return tuple(builder.manual_files(builder.builder_config))

    def __post_init__(self):
        object.__setattr__(self, "on_error", OnError(self.on_error))
        names = [c.name for c in self._builder_class().BUILDER_CONFIGS]
        if self._config_name() not in names:
            raise ValueError(
                f"{type(self).__name__}: builder config {self._config_name()!r} does not exist; "
                f"{self._builder_class().__name__} has {names}"
            )
        if self.split not in self.splits():
            raise ValueError(
                f"{type(self).__name__}: no split {self.split!r}; choose one of {self.splits()}"
            )

    def files(self) -> list[Path]:
        """The original files this source reads; ``MissingFilesError`` names any missing."""
        return self.builder().split_files(self.split, self.manual_dir)

    def examples(self) -> list[ex.Example]:
        builder = self.builder()
        paths = builder.split_files(self.split, self.manual_dir)
        tally = Tally(ReadConfig(on_error=self.on_error))
        out = builder.read_files(self.split, paths, tally)
        logger.info("%s: %s", type(self).__name__, tally.report().summary())
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class HHRLHF(_Released):
    """Anthropic HH-RLHF preference pairs of one subset (``fbjax.data.hh_rlhf.SUBSETS``)."""

    subset: str = "helpful-base"

    def _builder_class(self):
        from fbjax.data.hh_rlhf import FbjaxHhRlhf

        return FbjaxHhRlhf

    def _config_name(self):
        return self.subset.replace("-", "_")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UltraFeedback(_Released):
    """UltraFeedback as ``"paired"`` (best vs worst fine-grained score), ``"binary"`` (thumbs
    at score >= 4) or ``"feedback"`` (GPT-4 critiques); one ``train`` split."""

    view: str = "paired"

    def _builder_class(self):
        from fbjax.data.ultrafeedback import FbjaxUltrafeedback

        return FbjaxUltrafeedback

    def _config_name(self):
        return self.view


@dataclasses.dataclass(frozen=True, kw_only=True)
class SHP(_Released):
    """Stanford Human Preferences pairs, weighted ``"vote_share"`` or ``"uniform"``."""

    weighting: str = "vote_share"

    def _builder_class(self):
        from fbjax.data.shp import FbjaxShp

        return FbjaxShp

    def _config_name(self):
        return self.weighting


@dataclasses.dataclass(frozen=True, kw_only=True)
class OASST1(_Released):
    """OpenAssistant OASST1 ranked sibling replies, ``"all"`` languages or ``"en"`` only."""

    languages: str = "en"

    def _builder_class(self):
        from fbjax.data.oasst1 import FbjaxOasst1

        return FbjaxOasst1

    def _config_name(self):
        return self.languages


@dataclasses.dataclass(frozen=True, kw_only=True)
class PKUSafeRLHF(_Released):
    """PKU-SafeRLHF pairs by ``"safer"`` / ``"better"`` response, or ``"negative"`` (every unsafe
    response alone)."""

    view: str = "safer"

    def _builder_class(self):
        from fbjax.data.pku_saferlhf import FbjaxPkuSaferlhf

        return FbjaxPkuSaferlhf

    def _config_name(self):
        return self.view


@dataclasses.dataclass(frozen=True, kw_only=True)
class TLDRComparisons(_Released):
    """Reddit TL;DR summary comparisons (Stiennon et al. 2020); ``validation`` is the release's
    ``valid1``, ``test`` its ``valid2``."""

    def _builder_class(self):
        from fbjax.data.tldr_comparisons import FbjaxTldrComparisons

        return FbjaxTldrComparisons

    def _config_name(self):
        return "paired"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SLF5K(_Released):
    """SLF5K summaries with human language feedback (``"feedback"``) or comparisons
    (``"paired"``)."""

    view: str = "feedback"

    def _builder_class(self):
        from fbjax.data.slf5k import FbjaxSlf5k

        return FbjaxSlf5k

    def _config_name(self):
        return self.view


class UnavailableError(NotImplementedError):
    """A run needs data fbjax cannot provide yet: a dataset with no reader
    (:class:`Unavailable`), or samples from the policy that only an online stage could give (an
    encoder with an ``unavailable`` reason). The command line reports it in one line."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Unavailable:
    """A dataset the paper used that fbjax has no reader for yet.

    Keeps the ``paper`` config complete and honest (``name`` says exactly what the paper read);
    reading it raises with ``reason``.
    """

    name: str
    reason: str
    split: str = "train"

    def __post_init__(self):
        if not self.name or not self.reason:
            raise ValueError("Unavailable needs the dataset's name and the reason it is missing")

    def examples(self) -> list[ex.Example]:
        raise UnavailableError(f"dataset {self.name!r} ({self.split}) has no fbjax reader: "
                               f"{self.reason}")


# ----------------------------------------------------------------------------- views


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mixture:
    """The examples of several sources, concatenated in order (the batch stream shuffles)."""

    parts: tuple[Any, ...]

    def __post_init__(self):
        if not self.parts:
            raise ValueError("Mixture needs at least one part")

    def examples(self) -> list[ex.Example]:
        return [e for part in self.parts for e in part.examples()]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairsAsBinary:
    """Preference pairs as thumbs: chosen -> desirable, rejected -> undesirable (the KTO
    paper's recipe, ``fbjax.data.conversions.pairs_to_binary``); other kinds pass through."""

    source: Any

    def examples(self) -> list[ex.Example]:
        out: list[ex.Example] = []
        for e in self.source.examples():
            out.extend(conversions.paired_to_binary(e) if isinstance(e, ex.PairedExample) else (e,))
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankedAsPairs:
    """Ranked lists as preference pairs (``conversions.ranked_to_pairs`` with ``strategy``);
    other kinds pass through."""

    source: Any
    strategy: str = "all_pairs"

    def __post_init__(self):
        if self.strategy not in conversions.PAIR_STRATEGIES:
            raise ValueError(f"strategy must be one of {conversions.PAIR_STRATEGIES}, "
                             f"got {self.strategy!r}")

    def examples(self) -> list[ex.Example]:
        out: list[ex.Example] = []
        for e in self.source.examples():
            if isinstance(e, ex.RankedExample):
                out.extend(conversions.ranked_to_pairs(e, strategy=self.strategy))
            else:
                out.append(e)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class LabelNoise:
    """Preference pairs with each label flipped independently with probability ``flip_rate``
    (deterministic in ``seed``): the controlled noise of robust-preference experiments."""

    source: Any
    flip_rate: float
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.flip_rate <= 1.0:
            raise ValueError(f"flip_rate must be in [0, 1], got {self.flip_rate}")

    def examples(self) -> list[ex.Example]:
        data = self.source.examples()
        # One draw per example, so which pairs flip does not depend on their content.
        flips = np.random.default_rng(self.seed).random(len(data)) < self.flip_rate
        out: list[ex.Example] = []
        for e, flip in zip(data, flips):
            if flip and isinstance(e, ex.PairedExample):
                e = ex.PairedExample(e.prompt, e.rejected, e.chosen, e.weight,
                                     {**e.meta, "flipped": True})
            out.append(e)
        return out


# ----------------------------------------------------------------------------- training data


@dataclasses.dataclass(frozen=True)
class Transcript:
    """Prompts in Anthropic's ``"\\n\\nHuman: ...\\n\\nAssistant:"`` transcript form, single turns
    included (the form HH-RLHF is released in and the DPO / HALOs code trains on)."""

    def render(self, prompt: ex.Prompt) -> str:
        return ex.render_transcript(prompt)

    def completion(self, prompt: ex.Prompt, text: str) -> str:
        """A reply follows the open ``"Assistant:"`` after one space, as in the released
        transcripts (``"...\\n\\nAssistant: reply"``); the space belongs to the reply's tokens,
        as in the DPO reference code, which tokenizes ``chosen[len(prompt):]``."""
        return ex.transcript_reply(text)


@dataclasses.dataclass(frozen=True)
class Chat:
    """Prompts laid out in a chat template (``fbjax.data.chat.ChatTemplate``), ending with the
    assistant prefix, as the model was instruction-tuned; a completion is followed by the
    template's ``assistant_suffix`` (its end-of-turn marker, trained)."""

    template: Any

    def __post_init__(self):
        if self.template.eos_between_turns:
            raise ValueError(
                f"chat template {self.template.name!r} separates turns with EOS ids, which a "
                "text prompt cannot carry; render it with fbjax.data.templates.render instead"
            )

    def render(self, prompt: ex.Prompt) -> str:
        from fbjax.data.chat import render_chat

        segments = render_chat(self.template, prompt, add_generation_prompt=True)
        return "".join(s.text for s in segments)

    def completion(self, prompt: ex.Prompt, text: str) -> str:
        return text + self.template.assistant_suffix


@dataclasses.dataclass(frozen=True, kw_only=True)
class Dataset:
    """Training data for a training stage (``fbjax.run.stages``): ``source`` examples encoded to token
    groups by ``encoder`` (e.g. ``encode.paired``, ``functools.partial(encode.unpaired,
    kl_offset=None)``), prompts rendered by ``template`` (:class:`Transcript`, :class:`Chat`, or
    None for ``encode.default_prompt_text``: a lone user turn verbatim, conversations as
    transcripts), tokenized by the tokenizer at ``tokenizer_path`` (a sentencepiece
    ``tokenizer.model``, a ``tokenizer.json``, or a directory holding one:
    ``fbjax.tokenizers.load_tokenizer``). Empty means the tokenizer of the checkpoint the run
    starts from (``init_from``), which the run passes in.

    Settings applied to every released source inside ``source`` (a :class:`Mixture` of the four
    HH-RLHF subsets included), so one ``--set`` reaches them all:

    * ``manual_dir``: the root holding the release's own files in its own layout (HH-RLHF:
      ``<subset>/<split>.jsonl.gz``); None keeps each source's own.
    * ``on_error``: the bad-record policy (``raise``: a ``file:line: reason`` error at the first
      malformed record; ``skip``: malformed records are dropped and counted per file).
    * ``split``: the split every released source reads; None keeps each source's own.
    * ``subsets``: the HH-RLHF subsets read (``fbjax.data.hh_rlhf.SUBSETS``; a comma-separated
      string is accepted, as ``--set data.subsets=harmless-base,helpful-base`` gives); the
      HH-RLHF sources of the tree are replaced by one per listed subset. None keeps them.
    """

    source: Any
    encoder: Encoder = encode.paired
    template: Transcript | Chat | None = None
    tokenizer_path: str = ""
    manual_dir: str | None = None
    on_error: OnError = OnError.RAISE
    split: str | None = None
    subsets: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "on_error", OnError(self.on_error))
        if isinstance(self.subsets, str):
            names = tuple(n.strip() for n in self.subsets.split(",") if n.strip())
            object.__setattr__(self, "subsets", names)
        if self.subsets is not None and not self.subsets:
            raise ValueError("data.subsets is empty; name at least one subset or use None")
        for leaf in leaves(self.source):
            if not isinstance(leaf, Source):
                raise TypeError(f"{type(leaf).__name__} is not a data source (needs examples())")
        self.resolved_source()  # a bad split or subset fails when the config is built

    def resolved_source(self) -> Any:
        """``source`` with ``manual_dir``, ``on_error``, ``split`` and ``subsets`` applied."""
        from fbjax.data.hh_rlhf import SUBSETS

        if self.subsets is not None:
            unknown = [s for s in self.subsets if s not in SUBSETS]
            if unknown:
                raise ValueError(f"data.subsets: unknown subset(s) {unknown}; choose from {SUBSETS}")
            if not any(isinstance(leaf, HHRLHF) for leaf in leaves(self.source)):
                raise ValueError("data.subsets: this dataset reads no HH-RLHF source, the only "
                                 "one with subsets")
        return _configure(self.source, self)

    def check_available(self) -> None:
        """Raises :class:`UnavailableError` if this data cannot be built at all (a source with no
        reader, or an encoder standing for samples an online stage would draw), before anything
        is loaded."""
        for leaf in leaves(self.resolved_source()):
            if isinstance(leaf, Unavailable):
                leaf.examples()
        reason = getattr(self.encoder, "unavailable", None)
        if reason:
            raise UnavailableError(reason)

    def check_files(self) -> None:
        """Raises one :class:`~fbjax.data.reading.MissingFilesError` naming every original file
        the sources need and cannot find, before anything is read."""
        errors = []
        for leaf in leaves(self.resolved_source()):
            if isinstance(leaf, _Released):
                try:
                    leaf.files()
                except MissingFilesError as e:
                    errors.append(e)
        if errors:
            raise MissingFilesError.merge(errors)

    def tokenizer(self, checkpoint_dir: str | None = None):
        """The tokenizer at ``tokenizer_path``, or when that is empty the one in
        ``checkpoint_dir`` (the resolved ``init_from``)."""
        from fbjax.tokenizers import load_tokenizer

        if self.tokenizer_path:
            return load_tokenizer(self.tokenizer_path)
        if checkpoint_dir is None:
            raise ValueError(
                "data.tokenizer_path is empty and the run starts from no checkpoint (init_from) "
                "whose tokenizer could be used: point it at a tokenizer.model, tokenizer.json or "
                "checkpoint directory (--set data.tokenizer_path=...)"
            )
        return load_tokenizer(checkpoint_dir)

    def prompt_text(self) -> Callable[[ex.Prompt], str]:
        if self.template is None:
            return encode.default_prompt_text
        return self.template.render

    def completion_text(self) -> Callable[[ex.Prompt, str], str]:
        if self.template is None:
            return encode.default_completion_text
        return self.template.completion

    def examples(self) -> list[ex.Example]:
        self.check_files()
        return self.resolved_source().examples()

    def load(self, tokenizer) -> list[Group]:
        data = self.examples()
        # Encoders that lay out completions (fbjax.data.encode's, with_prompt_text's) take the
        # template's completion rendering; others (experiments' own) render completions alone.
        if "completion_text" in inspect.signature(self.encoder).parameters:
            return self.encoder(data, tokenizer, prompt_text=self.prompt_text(),
                                completion_text=self.completion_text())
        return self.encoder(data, tokenizer, prompt_text=self.prompt_text())


def _configure(source: Any, data: Dataset, *, subsets: bool = True) -> Any:
    """``source`` with a :class:`Dataset`'s flat settings pushed into its released sources
    (``subsets=False``: an HH-RLHF part whose Mixture already applied ``data.subsets``)."""
    if isinstance(source, _Released):
        changes: dict[str, Any] = {"on_error": data.on_error}
        if data.manual_dir is not None:
            changes["manual_dir"] = data.manual_dir
        if data.split is not None:
            changes["split"] = data.split
        try:
            source = dataclasses.replace(source, **changes)
        except ValueError as e:
            raise ValueError(f"data.split={data.split!r}: {e}") from None
        if subsets and data.subsets is not None and isinstance(source, HHRLHF):
            parts = tuple(dataclasses.replace(source, subset=s) for s in data.subsets)
            return parts[0] if len(parts) == 1 else Mixture(parts=parts)
        return source
    if isinstance(source, Mixture):
        parts = source.parts
        if data.subsets is not None:
            parts = _with_subsets(parts, data.subsets)
        return dataclasses.replace(source, parts=tuple(
            _configure(p, data, subsets=not isinstance(p, HHRLHF)) for p in parts))
    if dataclasses.is_dataclass(source) and hasattr(source, "source"):
        return dataclasses.replace(source, source=_configure(source.source, data))
    return source


def _with_subsets(parts: Sequence[Any], subsets: Sequence[str]) -> list[Any]:
    """The HH-RLHF parts replaced, at the first one's place, by one per subset."""
    hh = [p for p in parts if isinstance(p, HHRLHF)]
    if not hh:
        return list(parts)
    out: list[Any] = []
    for p in parts:
        if p is hh[0]:
            out.extend(dataclasses.replace(p, subset=s) for s in subsets)
        elif not isinstance(p, HHRLHF):
            out.append(p)
    return out


_COMPLETION_FIELDS = ("completion", "chosen", "rejected", "refinement")


def with_prompt_text(fn: Callable[..., list[Group]]) -> Encoder:
    """Adapts an encoder that renders prompts itself (``fbjax.data.language`` functions take
    ``Prompt`` tuples) to the keywords :class:`Dataset` passes: prompts are rendered first and
    handed over as one user turn, and each reply field (``completion``, ``chosen``,
    ``rejected``, ``refinement``) is rendered as it follows its prompt in the template."""

    @functools.wraps(fn)
    def encoder(data: Sequence[ex.Example], tokenizer, *, prompt_text,
                completion_text=encode.default_completion_text, **kwargs):
        rendered = []
        for e in data:
            replies = {f: completion_text(e.prompt, getattr(e, f)) for f in _COMPLETION_FIELDS
                       if isinstance(getattr(e, f, None), str)}
            rendered.append(dataclasses.replace(e, prompt=ex.user_prompt(prompt_text(e.prompt)),
                                                **replies))
        return fn(rendered, tokenizer, **kwargs)

    del encoder.__wrapped__  # its own signature (with completion_text), not fn's
    return encoder
