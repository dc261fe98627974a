"""Reading original dataset files record by record, with a malformed-record policy.

Every dataset reader in ``fbjax.data`` is a *converter* (one JSON record -> zero or more typed
examples) driven by ``convert_records``. The driver owns file opening, line numbering, UTF-8 and
JSON decoding and the error policy, so the policy is identical across datasets:

* ``ReadConfig(on_error="raise")`` (the default) raises ``DataError`` naming the file, the
  1-based line number and the problem at the first malformed record;
* ``ReadConfig(on_error="skip")`` skips malformed records and counts them per reason in the
  ``ReadReport`` (the first few are kept verbatim, and each is logged as a warning).

Besides malformed records a converter may *filter* parts of a record on purpose (a documented
dataset rule, e.g. "UltraFeedback prompt whose replies all tie"); filters never raise and are
counted separately, so every record read is accounted for as examples, filtered or skipped.

Files may be plain, ``.gz``, ``.xz``/``.lzma`` or ``.bz2`` JSON-lines files.
"""

from __future__ import annotations

import bz2
import collections
import dataclasses
import enum
import gzip
import json
import logging
import lzma
import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

logger = logging.getLogger("fbjax.data")

E = TypeVar("E")
PathLike = str | os.PathLike



class OnError(str, enum.Enum):
    """The bad-record policy: stop at the first malformed record, or skip and count it."""

    RAISE = "raise"
    SKIP = "skip"


ON_ERROR_CHOICES = tuple(e.value for e in OnError)

# Reasons a record is malformed; converters may add dataset-specific ones.
BAD_JSON = "bad_json"
NON_UTF8 = "non_utf8"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
BAD_VALUE = "bad_value"
EMPTY_COMPLETION = "empty_completion"
IDENTICAL_COMPLETIONS = "identical_completions"
UNPARSEABLE_TRANSCRIPT = "unparseable_transcript"
PROMPT_MISMATCH = "prompt_mismatch"
# File-level problems: the rest of a corrupt file cannot be read, an empty file holds nothing.
CORRUPT_FILE = "corrupt_file"
EMPTY_FILE = "empty_file"


@dataclasses.dataclass(frozen=True)
class ReadConfig:
    """How readers treat malformed records.

    on_error: ``OnError.RAISE`` (or ``"raise"``) stops at the first malformed record with a
        ``DataError``; ``OnError.SKIP`` (``"skip"``) drops it and counts it in the ``ReadReport``.
    max_kept_problems: how many skipped problems the report keeps verbatim (all are counted).
    """

    on_error: OnError = OnError.RAISE
    max_kept_problems: int = 20

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(
                f"ReadConfig.on_error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}"
            )
        object.__setattr__(self, "on_error", OnError(self.on_error))
        if self.max_kept_problems < 0:
            raise ValueError(f"max_kept_problems must be >= 0, got {self.max_kept_problems}")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One malformed record: where it is and what is wrong with it."""

    file: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        # line 0: a problem of the whole file (empty, unreadable), not of one record.
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.reason}: {self.detail}"


class DataError(ValueError):
    """A malformed record under ``on_error="raise"``; ``problem`` says where and why."""

    def __init__(self, problem: Problem):
        super().__init__(str(problem))
        self.problem = problem

    @property
    def file(self) -> str:
        return self.problem.file

    @property
    def line(self) -> int:
        return self.problem.line

    @property
    def reason(self) -> str:
        return self.problem.reason


class MissingFilesError(FileNotFoundError):
    """Original release files that a read needs and cannot find; one line naming each expected
    path and where the release is obtained (the CLI prints it without a traceback)."""

    def __init__(self, what: str, missing: Sequence[str], obtain: str, *, hint: str = ""):
        self.what = what
        self.missing = tuple(missing)
        self.obtain = obtain
        self.hint = hint
        more = f"; {hint}" if hint else ""
        super().__init__(f"{what}: missing {', '.join(self.missing)}{more}. {obtain}")

    def __str__(self) -> str:
        return self.args[0]

    @classmethod
    def merge(cls, errors: Sequence[MissingFilesError]) -> MissingFilesError:
        """One error for several sources, so a user sees every missing file at once."""
        if len(errors) == 1:
            return errors[0]
        hints = dict.fromkeys(h for e in errors if (h := getattr(e, "hint", "")))
        return cls("; ".join(e.what for e in errors), [p for e in errors for p in e.missing],
                   " ".join(dict.fromkeys(e.obtain for e in errors)), hint="; ".join(hints))


class Malformed(Exception):
    """Raised by converters for a malformed record; the driver adds file and line."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class ReadReport:
    """Accounting for one read: every record ends up as examples, filtered or skipped.

    records: non-blank lines read. examples: typed examples produced.
    skipped: malformed records per reason (only non-empty under ``on_error="skip"``).
    skipped_by_file: the same, per file.
    filtered: parts of records dropped by a documented dataset rule, per reason.
    notes: informational counts (e.g. transcripts repaired by a documented rule).
    problems: the first ``max_kept_problems`` skipped problems.
    """

    files: tuple[str, ...]
    records: int
    examples: int
    skipped: Mapping[str, int]
    filtered: Mapping[str, int]
    notes: Mapping[str, int]
    problems: tuple[Problem, ...]
    skipped_by_file: Mapping[str, int] = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        return (
            f"{self.records} records -> {self.examples} examples; "
            f"skipped {dict(self.skipped)}; filtered {dict(self.filtered)}; "
            f"notes {dict(self.notes)}"
        )


class Tally:
    """Mutable counters behind a ``ReadReport``; one per read, owned by the driver."""

    def __init__(self, config: ReadConfig | None = None):
        self.config = config or ReadConfig()
        self.files: list[str] = []
        self.records = 0
        self.examples = 0
        self.skipped: collections.Counter[str] = collections.Counter()
        self.skipped_by_file: collections.Counter[str] = collections.Counter()
        self.filtered: collections.Counter[str] = collections.Counter()
        self.notes: collections.Counter[str] = collections.Counter()
        self.problems: list[Problem] = []

    def problem(self, problem: Problem) -> None:
        """Applies the error policy to one malformed record."""
        if self.config.on_error is OnError.RAISE:
            raise DataError(problem)
        self.skipped[problem.reason] += 1
        self.skipped_by_file[problem.file] += 1
        if len(self.problems) < self.config.max_kept_problems:
            self.problems.append(problem)
            logger.debug("skipping malformed record %s", problem)

    def filter(self, reason: str, count: int = 1) -> None:
        self.filtered[reason] += count

    def note(self, reason: str, count: int = 1) -> None:
        self.notes[reason] += count

    def report(self) -> ReadReport:
        return ReadReport(
            files=tuple(self.files),
            records=self.records,
            examples=self.examples,
            skipped=dict(self.skipped),
            skipped_by_file=dict(self.skipped_by_file),
            filtered=dict(self.filtered),
            notes=dict(self.notes),
            problems=tuple(self.problems),
        )


@dataclasses.dataclass(frozen=True)
class ReadResult(Generic[E]):
    """Examples read from original files, and the accounting for them."""

    examples: tuple[E, ...]
    report: ReadReport

    def __len__(self) -> int:
        return len(self.examples)


@dataclasses.dataclass(frozen=True)
class RecordContext:
    """What a converter knows about the record it is converting."""

    file: str
    line: int
    tally: Tally

    def filter(self, reason: str, count: int = 1) -> None:
        self.tally.filter(reason, count)

    def note(self, reason: str, count: int = 1) -> None:
        self.tally.note(reason, count)

    def problem(self, reason: str, detail: str) -> None:
        """A malformed *part* of the record (e.g. one completion's score): raises under
        ``on_error="raise"``; under ``"skip"`` counts it while the rest of the record is used."""
        self.tally.problem(Problem(self.file, self.line, reason, detail))

    def meta(self, source: str, **extra: Any) -> dict[str, Any]:
        """Provenance every example carries, plus dataset-specific fields."""
        return {"source": source, "file": os.path.basename(self.file), "line": self.line, **extra}


Converter = Callable[[Mapping[str, Any], RecordContext], Iterable[E]]


def open_binary(path: PathLike):
    """Opens ``path`` for binary reading, decompressing by suffix."""
    name = str(path)
    if name.endswith(".gz"):
        return gzip.open(name, "rb")
    if name.endswith((".xz", ".lzma")):
        return lzma.open(name, "rb")
    if name.endswith(".bz2"):
        return bz2.open(name, "rb")
    return open(name, "rb")


# What a damaged compressed file raises while it is read: gzip.BadGzipFile (an OSError) for a
# bad header or CRC, EOFError for a truncated stream, zlib.error for corrupt deflate data, and
# the lzma/bz2 equivalents.
_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _decode_line(file: str, line_no: int, raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Problem(file, line_no, NON_UTF8, f"invalid UTF-8 at byte {e.start}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return Problem(file, line_no, BAD_JSON, f"{e.msg} at column {e.colno}")
    except RecursionError:
        return Problem(file, line_no, BAD_JSON, "JSON nested too deeply to parse")
    if not isinstance(record, dict):
        return Problem(
            file, line_no, NOT_OBJECT, f"expected a JSON object, got {type(record).__name__}"
        )
    return record


_COMPRESSED = (".gz", ".xz", ".lzma", ".bz2")


def stream_damage(path: PathLike) -> tuple[int, str] | None:
    """``(line, detail)`` where a compressed file stops decompressing, or None when it is whole.

    A damaged stream is only detected when it is read to its end (the gzip CRC covers the whole
    file), and a flipped byte can first garble records that still parse. So a compressed file is
    checked in full before any of its records is used.
    """
    lines = 0
    try:
        with open_binary(path) as f:
            for _ in f:
                lines += 1
    except FileNotFoundError:
        raise
    except _DECOMPRESSION_ERRORS as e:
        return lines + 1, f"{type(e).__name__}: {e}"
    return None


def iter_json_lines(path: PathLike) -> Iterator[tuple[int, Any]]:
    """Yields ``(line_number, record_or_Problem)`` for each non-blank line of a JSONL file.

    Decoding problems (invalid UTF-8, invalid JSON, a non-object line) come back as ``Problem``
    values rather than exceptions so the caller's policy decides what happens. So do the two
    problems of a whole file: a damaged compressed stream (``corrupt_file`` at the line where
    decompression fails; *no* record of the file is used, since any of them may be garbled)
    and a file with no record at all (``empty_file``, line 0), which would otherwise read as a
    silent 0 examples.
    """
    file = str(path)
    if file.endswith(_COMPRESSED):
        damage = stream_damage(path)
        if damage is not None:
            line, detail = damage
            yield line, Problem(file, line, CORRUPT_FILE,
                                f"damaged compressed file, none of its records is used ({detail})")
            return
    seen = False
    with open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip():
                continue
            seen = True
            yield line_no, _decode_line(file, line_no, raw)
    if not seen:
        yield 0, Problem(file, 0, EMPTY_FILE, "the file holds no records (empty or blank)")


def convert_records(
    paths: PathLike | Sequence[PathLike],
    convert: Converter[E],
    tally: Tally,
) -> Iterator[E]:
    """Streams typed examples from JSONL ``paths`` through ``convert``, applying the policy.

    A converter sees one decoded record at a time; if it raises ``Malformed`` none of that
    record's examples are emitted (a record is all or nothing).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for path in paths:
        file = str(path)
        tally.files.append(file)
        before = collections.Counter(tally.skipped)
        for line_no, record in iter_json_lines(path):
            if isinstance(record, Problem):
                tally.records += record.reason not in (CORRUPT_FILE, EMPTY_FILE)
                tally.problem(record)
                continue
            tally.records += 1
            try:
                produced = list(convert(record, RecordContext(file, line_no, tally)))
            except Malformed as m:
                tally.problem(Problem(file, line_no, m.reason, m.detail))
                continue
            tally.examples += len(produced)
            yield from produced
        skipped = collections.Counter(tally.skipped)
        skipped.subtract(before)
        if +skipped:
            # One line per file, so a run's log says where data were dropped and why.
            logger.warning("%s: skipped %d malformed records (%s)", file,
                           sum((+skipped).values()), dict(+skipped))


def read_records(
    paths: PathLike | Sequence[PathLike],
    convert: Converter[E],
    config: ReadConfig | None = None,
) -> ReadResult[E]:
    """Reads all of ``paths`` into memory and returns the examples with their report."""
    tally = Tally(config)
    examples = tuple(convert_records(paths, convert, tally))
    report = tally.report()
    logger.info("read %s: %s", ", ".join(report.files), report.summary())
    return ReadResult(examples, report)


def expand_paths(paths: PathLike | Sequence[PathLike]) -> list[Path]:
    """A path or sequence of paths, as a list; directories are not expanded."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


# ---- field access: each raises Malformed with a reason the report can count ---------------


def _where(key: str) -> str:
    return f"field {key!r}"


def require(record: Mapping[str, Any], key: str) -> Any:
    if key not in record:
        raise Malformed(MISSING_FIELD, f"{_where(key)} is missing")
    value = record[key]
    if value is None:
        raise Malformed(MISSING_FIELD, f"{_where(key)} is null")
    return value


def check_text(value: str, key: str) -> str:
    """Rejects strings that cannot be written as UTF-8 (JSON ``\\ud800``-style lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Malformed(NON_UTF8, f"{_where(key)} has an unpaired surrogate at {e.start}") from None
    return value


def get_str(record: Mapping[str, Any], key: str, *, nonempty: bool = False) -> str:
    value = require(record, key)
    if not isinstance(value, str):
        raise Malformed(WRONG_TYPE, f"{_where(key)} is {type(value).__name__}, expected str")
    check_text(value, key)
    if nonempty and not value.strip():
        raise Malformed(BAD_VALUE, f"{_where(key)} is empty")
    return value


def get_optional_str(record: Mapping[str, Any], key: str) -> str | None:
    if record.get(key) is None:
        return None
    return get_str(record, key)


def get_int(record: Mapping[str, Any], key: str) -> int:
    value = require(record, key)
    # bool is an int subclass in Python; a JSON true where a number belongs is a type error.
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise Malformed(WRONG_TYPE, f"{_where(key)} is {type(value).__name__}, expected int")
    return value


def get_float(record: Mapping[str, Any], key: str) -> float:
    value = require(record, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(WRONG_TYPE, f"{_where(key)} is {type(value).__name__}, expected number")
    value = float(value)
    if not math.isfinite(value):
        raise Malformed(BAD_VALUE, f"{_where(key)} is {value}")
    return value


def get_bool(record: Mapping[str, Any], key: str) -> bool:
    value = require(record, key)
    if not isinstance(value, bool):
        raise Malformed(WRONG_TYPE, f"{_where(key)} is {type(value).__name__}, expected bool")
    return value


def get_list(record: Mapping[str, Any], key: str) -> list:
    value = require(record, key)
    if not isinstance(value, list):
        raise Malformed(WRONG_TYPE, f"{_where(key)} is {type(value).__name__}, expected list")
    return value


def get_dict(record: Mapping[str, Any], key: str) -> dict:
    value = require(record, key)
    if not isinstance(value, dict):
        raise Malformed(WRONG_TYPE, f"{_where(key)} is {type(value).__name__}, expected object")
    return value


def completion_text(record: Mapping[str, Any], key: str) -> str:
    """A reply field: a non-empty string, returned stripped of surrounding whitespace."""
    text = get_str(record, key).strip()
    if not text:
        raise Malformed(EMPTY_COMPLETION, f"{_where(key)} is empty")
    return text


def check_distinct(chosen: str, rejected: str) -> None:
    if chosen == rejected:
        raise Malformed(IDENTICAL_COMPLETIONS, "chosen and rejected replies are identical")


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    """Rejects a reader option outside ``allowed``, naming the option and its choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
