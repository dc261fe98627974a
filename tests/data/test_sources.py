"""``config.data`` as a user reaches it with ``--set``: one manual directory, bad-record policy,
split and subsets for every released source of a Dataset; missing files named at once; no
network at run time."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket
import time
from pathlib import Path

import pytest

from fbjax.run.overrides import apply_overrides
from fbjax.data import encode, hh_rlhf, sources
from fbjax.data.reading import DataError, MissingFilesError, OnError

HH_TEST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf" / \
    "harmless-base" / "test.jsonl.gz"
needs_hh = pytest.mark.skipif(not HH_TEST.exists(), reason=f"shared HH-RLHF split not at {HH_TEST}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Holder:
    """Stands for the experiment config: ``data`` is the field ``--set data.*`` walks into."""

    data: sources.Dataset


def hh_all() -> sources.Dataset:
    """The DPO paper variant's data: the four HH-RLHF subsets, train split, no manual dir."""
    return sources.Dataset(
        source=sources.Mixture(parts=tuple(sources.HHRLHF(subset=s) for s in hh_rlhf.SUBSETS)),
        encoder=encode.paired, template=sources.Transcript())


def release_dir(root: Path, subsets=hh_rlhf.SUBSETS) -> Path:
    """``<subset>/{train,test}.jsonl.gz`` as the release lays them out, each a copy of the
    shared harmless-base test file."""
    for subset in subsets:
        for split in ("train", "test"):
            (root / subset).mkdir(parents=True, exist_ok=True)
            shutil.copy(HH_TEST, root / subset / f"{split}.jsonl.gz")
    return root


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection fails (and is recorded)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@needs_hh
def test_set_reaches_every_source_of_the_mixture(tmp_path, caplog):
    root = release_dir(tmp_path / "DATA")
    config = apply_overrides(Holder(data=hh_all()), [
        f"data.manual_dir={root}", "data.on_error=skip", "data.split=test"])
    assert config.data.on_error is OnError.SKIP
    leaves = sources.leaves(config.data.resolved_source())
    assert [(x.subset, x.split, x.manual_dir, x.on_error) for x in leaves] == [
        (s, "test", str(root), OnError.SKIP) for s in hh_rlhf.SUBSETS]
    with caplog.at_level(logging.WARNING, logger="fbjax.data"):
        examples = config.data.examples()
    assert len(examples) == 4 * 2308
    # Each file's 4 empty replies are reported once, with the file's name.
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == [f"{root / s / 'test.jsonl.gz'}: skipped 4 malformed records "
                     "({'empty_completion': 4})" for s in hh_rlhf.SUBSETS]


@needs_hh
def test_default_policy_stops_at_the_empty_reply_of_line_87(tmp_path):
    root = release_dir(tmp_path / "DATA", subsets=("harmless-base",))
    data = apply_overrides(Holder(data=hh_all()), [
        f"data.manual_dir={root}", "data.subsets=harmless-base"]).data
    with pytest.raises(DataError) as err:
        data.examples()
    assert str(err.value) == (f"{root}/harmless-base/train.jsonl.gz:87: empty_completion: "
                              "chosen final assistant reply is empty")


@needs_hh
def test_subsets_and_split_select_what_is_read(tmp_path):
    root = release_dir(tmp_path / "DATA", subsets=("helpful-base", "helpful-online"))
    data = apply_overrides(Holder(data=hh_all()), [
        f"data.manual_dir={root}", "data.subsets=helpful-base,helpful-online",
        "data.split=test", "data.on_error=skip"]).data
    assert data.subsets == ("helpful-base", "helpful-online")
    examples = data.examples()
    assert len(examples) == 2 * 2308
    assert {e.meta["subset"] for e in examples} == {"helpful-base", "helpful-online"}
    # A lone source takes the subsets too.
    lone = sources.Dataset(source=sources.HHRLHF(), subsets=("helpful-online",),
                           manual_dir=str(root), split="test", on_error="skip")
    assert [x.subset for x in sources.leaves(lone.resolved_source())] == ["helpful-online"]
    # Views keep wrapping the configured sources.
    kto = sources.Dataset(source=sources.PairsAsBinary(source=hh_all().source),
                          manual_dir=str(root), split="test", subsets="helpful-base")
    (leaf,) = sources.leaves(kto.resolved_source())
    assert (leaf.subset, leaf.split, leaf.manual_dir) == ("helpful-base", "test", str(root))


@pytest.mark.parametrize("override, message", [
    ("data.on_error=ignore", r"choose one of \['raise', 'skip'\]"),
    ("data.split=valid", r"data.split='valid': HHRLHF: no split 'valid'; choose one of"),
    ("data.subsets=harmless", r"data.subsets: unknown subset\(s\) \['harmless'\]"),
    ("data.manual_dir_x=/d", r"unknown config key 'data.manual_dir_x'; did you mean data.manual_dir"),
])
def test_bad_settings_fail_when_set(override, message):
    with pytest.raises((ValueError, KeyError), match=message):
        apply_overrides(Holder(data=hh_all()), [override])


def test_missing_files_are_all_named_at_once_without_network(tmp_path, no_network):
    empty = tmp_path / "DATA"
    empty.mkdir()
    data = apply_overrides(Holder(data=hh_all()), [f"data.manual_dir={empty}"]).data
    start = time.monotonic()
    with pytest.raises(MissingFilesError) as err:
        data.examples()
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, FileNotFoundError)
    for subset in hh_rlhf.SUBSETS:
        assert f"{empty}/{subset}/train.jsonl.gz" in message
    assert "https://github.com/anthropics/hh-rlhf" in message
    assert err.value.missing == tuple(f"{empty}/{s}/train.jsonl.gz" for s in hh_rlhf.SUBSETS)
    # Without any manual_dir the message says how to set it; nothing is fetched.
    with pytest.raises(MissingFilesError, match=r"set manual_dir \(--set data.manual_dir=DIR\)"):
        hh_all().examples()
    assert no_network == []


@needs_hh
def test_reading_and_tfds_preparation_are_offline(tmp_path, no_network):
    from fbjax.data.tfds_common import load_split, prepare

    root = release_dir(tmp_path / "DATA", subsets=("harmless-base",))
    source = sources.HHRLHF(subset="harmless-base", split="test", manual_dir=str(root),
                            data_dir=str(tmp_path / "tfds"), on_error="skip")
    assert len(source.examples()) == 2308
    builder = prepare(source.builder(), root)
    assert len(load_split(builder, "test")) == 2308
    assert builder.reports["test"].skipped == {"empty_completion": 4}
    # A builder asked to prepare without the files says which ones, rather than downloading.
    with pytest.raises(MissingFilesError, match="helpful-base/train.jsonl.gz"):
        prepare(sources.HHRLHF(subset="helpful-base", data_dir=str(tmp_path / "tfds2")).builder(),
                tmp_path / "nothing")
    assert no_network == []
