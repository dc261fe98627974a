"""The truncation policy of ``fbjax.data.packing.truncate_group``, by hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest

from fbjax.data.packing import Group, truncate_group


def _group(prompt=6, completions=(10, 4), masks=False):
    return Group(np.arange(prompt), tuple(np.arange(100, 100 + n) for n in completions),
                 masks=tuple(np.ones(n) for n in completions) if masks else None)


def _lens(group):
    return len(group.prompt), [len(c) for c in group.completions]


def test_prompt_keeps_its_end_and_completions_their_start():
    out = truncate_group(_group(), seq_len=100, max_prompt_len=4, max_completion_len=5,
                         share_prefix=True)
    assert out.prompt.tolist() == [2, 3, 4, 5]
    assert [c.tolist() for c in out.completions] == [[100, 101, 102, 103, 104],
                                                     [100, 101, 102, 103]]


@pytest.mark.parametrize("share_prefix, packed, expected", [
    # one row, prompt once: 16 - 6 = 10 completion tokens, the longest cut first
    (True, True, [6, 4]),
    # one row, prompt per completion: 16 - 12 = 4 tokens for both
    (False, True, [2, 2]),
    # a row per sequence: each completion gets 16 - 6 = 10
    (False, False, [10, 4]),
])
def test_budget_follows_the_row_layout(share_prefix, packed, expected):
    out = truncate_group(_group(masks=True), seq_len=16, max_prompt_len=8,
                         max_completion_len=12, share_prefix=share_prefix, packed=packed)
    assert _lens(out) == (6, expected)
    assert [len(m) for m in out.masks] == expected  # masks are cut with their completion


def test_truncation_is_idempotent():
    kw = dict(seq_len=16, max_prompt_len=8, max_completion_len=12, share_prefix=False)
    once = truncate_group(_group(), **kw)
    twice = truncate_group(once, **kw)
    assert _lens(once) == _lens(twice)


def test_a_row_too_short_for_its_completions_names_the_settings():
    # Three prompt copies and three completions cannot share a 4-token row at any prompt length.
    with pytest.raises(ValueError, match="raise train.seq_len or lower train.max_prompt_len"):
        truncate_group(_group(prompt=8, completions=(10, 4, 3)), seq_len=4, max_prompt_len=8,
                       max_completion_len=12,
                       share_prefix=False)


def test_a_prompt_longer_than_the_row_keeps_its_last_half_row():
    # A paper's max_prompt_len=256 of 512, run with seq_len=256: the prompt would fill the row.
    group = Group(np.arange(300), (np.arange(50), np.arange(90)))
    padded = truncate_group(group, seq_len=256, max_prompt_len=256,
                                    max_completion_len=256, share_prefix=False, packed=False)
    assert padded.prompt.tolist() == list(range(172, 300))  # its last 128 tokens
    assert [len(c) for c in padded.completions] == [50, 90]
    # Packed without sharing, the prompt is in the row once per completion: a quarter each.
    packed = truncate_group(group, seq_len=256, max_prompt_len=256,
                                    max_completion_len=256, share_prefix=False, packed=True)
    assert len(packed.prompt) == 64 and sum(len(c) for c in packed.completions) <= 256 - 128
    # A prompt that fits is cut to max_prompt_len only, as before.
    fits = truncate_group(group, seq_len=512, max_prompt_len=200,
                                  max_completion_len=256, share_prefix=False, packed=False)
    assert fits.prompt.tolist() == list(range(100, 300))
