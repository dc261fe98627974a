"""TFDS plumbing shared by the dataset builders: features per example kind, and a base builder.

The builders write ``array_record`` files (the default here), which need neither TensorFlow to
build nor to read: ``builder.as_data_source()`` gives random-access sources (``load_split``
reads them). ``from_features`` turns a stored record (strings come back as ``bytes``) into the
typed example again.

A builder subclass says which original files each split reads (relative paths under the
manual directory) and how to read them; the
base class turns that into TFDS splits and keeps each split's ``ReadReport`` in
``builder.reports`` after ``download_and_prepare``.
"""

from __future__ import annotations

import dataclasses
import glob
import inspect
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from fbjax.data import examples as ex
from fbjax.data.reading import MissingFilesError, OnError, ReadConfig, ReadReport, Tally

logger = logging.getLogger("fbjax.data")

_TEXT = tfds.features.Text


def _prompt_feature() -> tfds.features.Sequence:
    return tfds.features.Sequence({"role": _TEXT(), "text": _TEXT()})


def features_for(kind: str) -> tfds.features.FeaturesDict:
    """The TFDS feature spec storing examples of ``kind``.

    ``meta`` is stored as a JSON string so datasets can carry different provenance fields
    without changing the spec. Optional values (``refinement``, ``score``) get a presence flag
    because TFDS has no nullable scalars.
    """
    common = {"prompt": _prompt_feature(), "meta": _TEXT()}
    specific: dict[str, Any]
    if kind == "paired":
        specific = {"chosen": _TEXT(), "rejected": _TEXT(), "weight": np.float32}
    elif kind == "binary":
        specific = {"completion": _TEXT(), "label": np.bool_}
    elif kind == "negative":
        specific = {"completion": _TEXT()}
    elif kind == "ranked":
        specific = {
            "completions": tfds.features.Sequence(_TEXT()),
            "scores": tfds.features.Sequence(np.float32),
        }
    elif kind == "feedback":
        specific = {
            "completion": _TEXT(),
            "feedback": _TEXT(),
            "kind": _TEXT(),
            "refinement": _TEXT(),
            "has_refinement": np.bool_,
            "score": np.float32,
            "has_score": np.bool_,
        }
    else:
        raise ValueError(f"unknown example kind {kind!r}; expected one of {list(ex.CLASS_OF_KIND)}")
    return tfds.features.FeaturesDict({**common, **specific})


def _encode_prompt(prompt: ex.Prompt) -> dict[str, list[str]]:
    return {"role": [r for r, _ in prompt], "text": [t for _, t in prompt]}


def to_features(example: ex.Example) -> dict[str, Any]:
    """The TFDS feature dict for ``example`` (inverse of ``from_features``)."""
    out: dict[str, Any] = {
        "prompt": _encode_prompt(example.prompt),
        "meta": json.dumps(dict(example.meta), sort_keys=True, ensure_ascii=False),
    }
    if isinstance(example, ex.PairedExample):
        out.update(chosen=example.chosen, rejected=example.rejected, weight=example.weight)
    elif isinstance(example, ex.BinaryExample):
        out.update(completion=example.completion, label=example.label)
    elif isinstance(example, ex.NegativeExample):
        out.update(completion=example.completion)
    elif isinstance(example, ex.RankedExample):
        out.update(completions=list(example.completions), scores=list(example.scores))
    elif isinstance(example, ex.FeedbackExample):
        out.update(
            completion=example.completion,
            feedback=example.feedback,
            kind=example.kind,
            refinement=example.refinement or "",
            has_refinement=example.refinement is not None,
            score=0.0 if example.score is None else example.score,
            has_score=example.score is not None,
        )
    else:
        raise TypeError(f"not a feedback example: {type(example).__name__}")
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _texts(values: Any) -> tuple[str, ...]:
    return tuple(_text(v) for v in values)


def from_features(kind: str, features: Mapping[str, Any]) -> ex.Example:
    """Rebuilds the typed example of ``kind`` from a stored TFDS record."""
    prompt = tuple(zip(_texts(features["prompt"]["role"]), _texts(features["prompt"]["text"])))
    meta = json.loads(_text(features["meta"]))
    if kind == "paired":
        return ex.PairedExample(
            prompt,
            _text(features["chosen"]),
            _text(features["rejected"]),
            float(features["weight"]),
            meta,
        )
    if kind == "binary":
        return ex.BinaryExample(
            prompt, _text(features["completion"]), bool(features["label"]), meta
        )
    if kind == "negative":
        return ex.NegativeExample(prompt, _text(features["completion"]), meta)
    if kind == "ranked":
        scores = tuple(float(s) for s in features["scores"])
        return ex.RankedExample(prompt, _texts(features["completions"]), scores, meta)
    if kind == "feedback":
        return ex.FeedbackExample(
            prompt,
            _text(features["completion"]),
            _text(features["feedback"]),
            _text(features["kind"]),
            _text(features["refinement"]) if bool(features["has_refinement"]) else None,
            float(features["score"]) if bool(features["has_score"]) else None,
            meta,
        )
    raise ValueError(f"unknown example kind {kind!r}")


@dataclasses.dataclass
class FeedbackConfig(tfds.core.BuilderConfig):
    """A builder config: which example ``kind`` it emits and dataset-specific ``options``."""

    kind: str = "paired"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


SplitFiles = Mapping[str, Sequence[str]]


class FeedbackBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base for builders that read original files with a ``fbjax.data`` reader.

    Subclasses set ``VERSION``, ``BUILDER_CONFIGS`` (``FeedbackConfig``), ``HOMEPAGE``,
    ``MANUAL_DOWNLOAD_INSTRUCTIONS`` and implement:

    * ``manual_files(config) -> {split: [relative path or glob under manual_dir]}``
    * ``read_split(split, paths, tally) -> Iterator[Example]``

    Files are read from ``manual_dir`` only; a builder never downloads (``HOMEPAGE`` and
    ``MANUAL_DOWNLOAD_INSTRUCTIONS`` tell a user where the release lives), so runs are offline.
    Prepare with :func:`prepare`, which also keeps TFDS from looking for prebuilt data on GCS.
    """

    HOMEPAGE = ""
    CITATION = ""

    # TFDS locates a builder's source through ``importlib_resources`` (an optional etils
    # dependency that is not installed here); the plain file path is all it needs it for
    # (finding a checksums file next to the module, which these builders do not ship).
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None

    def __init__(self, *, on_error: OnError | str = OnError.RAISE, file_format: str = "array_record", **kwargs):
        self.read_config = ReadConfig(on_error=on_error)
        self.reports: dict[str, ReadReport] = {}
        super().__init__(file_format=file_format, **kwargs)

    # ---- subclass hooks ----

    def manual_files(self, config: FeedbackConfig) -> SplitFiles:
        raise NotImplementedError

    def read_split(self, split: str, paths: Sequence[Path], tally: Tally) -> Iterator[ex.Example]:
        raise NotImplementedError

    # ---- TFDS hooks ----

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(type(self).__doc__ or "").strip(),
            features=features_for(self.builder_config.kind),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
            # File order is the original release's order, which keeps builds reproducible and
            # lets a stored example be traced back (meta has file and line anyway).
            disable_shuffling=True,
        )

    def _manual_root(self, dl_manager) -> Path | None:
        try:
            return Path(dl_manager.manual_dir)
        except (AssertionError, ValueError):
            return None

    def split_files(self, split: str, manual_dir: str | os.PathLike | None) -> list[Path]:
        """The original files of ``split`` under ``manual_dir``, in release order.

        Raises :class:`~fbjax.data.reading.MissingFilesError` naming every expected path and
        where the release is obtained, when ``manual_dir`` is unset or any pattern matches
        nothing. Nothing is ever downloaded: runs stay offline and fail in seconds.
        """
        files = self.manual_files(self.builder_config)
        if split not in files:
            raise ValueError(f"{self.name}/{self.builder_config.name}: no split {split!r}; "
                             f"choose one of {tuple(files)}")
        patterns = files[split]
        if manual_dir is None:
            raise MissingFilesError(self._where(split), [f"<manual_dir>/{p}" for p in patterns],
                                    self._obtain(), hint="set manual_dir (--set data.manual_dir=DIR)")
        paths: list[Path] = []
        missing: list[str] = []
        for pattern in patterns:
            matched = sorted(glob.glob(os.path.join(manual_dir, pattern)))
            if not matched:
                missing.append(os.path.join(manual_dir, pattern))
            paths.extend(Path(p) for p in matched)
        if missing:
            raise MissingFilesError(self._where(split), missing, self._obtain())
        return paths

    def read_files(self, split: str, paths: Sequence[Path], tally: Tally) -> list[ex.Example]:
        """The examples of ``split`` read straight from its original ``paths``."""
        return list(self.read_split(split, paths, tally))

    def _where(self, split: str) -> str:
        return f"{self.name}/{self.builder_config.name} split {split!r}"

    def _obtain(self) -> str:
        return " ".join(f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS} Release: {self.HOMEPAGE}".split())

    def _resolve_files(self, dl_manager) -> dict[str, list[Path]]:
        root = self._manual_root(dl_manager)
        return {split: self.split_files(split, root) for split in self.manual_files(self.builder_config)}

    def _split_generators(self, dl_manager):
        files = self._resolve_files(dl_manager)
        return {split: self._generate_examples(split, paths) for split, paths in files.items()}

    def _generate_examples(self, split: str, paths: Sequence[Path]):
        tally = Tally(self.read_config)
        for index, example in enumerate(self.read_split(split, paths, tally)):
            yield f"{index:010d}", to_features(example)
        self.reports[split] = tally.report()
        logger.info("%s %s: %s", self.name, split, self.reports[split].summary())


def prepare(builder: FeedbackBuilder, manual_dir: str | os.PathLike) -> FeedbackBuilder:
    """Writes the builder's ``array_record`` files from the original files in ``manual_dir``,
    without any network access (no download, no GCS lookup)."""
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir), try_download_gcs=False))
    return builder


def load_split(builder: tfds.core.DatasetBuilder, split: str) -> list[ex.Example]:
    """All examples of a prepared split, decoded; meant for small splits and tests."""
    kind = builder.builder_config.kind
    source = builder.as_data_source(split=split)
    return [from_features(kind, source[i]) for i in range(len(source))]
