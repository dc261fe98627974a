"""Text fidelity: decoding a training sequence (prompt ids + completion ids) gives exactly the text
the template renders from the original record, for every dataset reader and each tokenizer kind
(GPT-2-style byte-level ``tokenizer.json``, Llama-3-style ``tokenizer.json`` with special tokens,
sentencepiece). The HH-RLHF check runs over every pair of the shared harmless-base test split.

Before the fix, the HH-RLHF reply was stripped and encoded alone, so with byte-level tokenizers
every pair lost the space after the final ``"Assistant:"``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from fbjax.data import encode, sources
from fbjax.data.chat import GEMMA, PLAIN
from fbjax.data.examples import PairedExample
from fbjax.tokenizers import HFTokenizer, train_sentencepiece
from tests.data import test_datasets as fx
from tests.data.helpers import write_jsonl
from tests.test_paper_path import train_byte_bpe

SHARED_HH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf"
HH_TEST = SHARED_HH / "harmless-base" / "test.jsonl.gz"
LLAMA3_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>")
# Llama 3's pre-tokenizer split (its tokenizer.json): contractions, letter runs, 1-3 digits,
# punctuation runs, newlines, spaces.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus() -> list[str]:
    texts = ["Human: hello there\n\nAssistant: hi, how can I help you today?",
             "the cat sat on the mat; 12+7=19. Use plenty of water and stir early."]
    if HH_TEST.exists():
        with gzip.open(HH_TEST, "rt", encoding="utf-8") as f:
            texts += [json.loads(next(f))["chosen"] for _ in range(200)]
    return texts


def _gpt2_style() -> HFTokenizer:
    return HFTokenizer(train_byte_bpe(_corpus(), 600, ["<|endoftext|>"]), eos="<|endoftext|>")


def _llama3_style() -> HFTokenizer:
    from tokenizers import Regex, Tokenizer, pre_tokenizers

    tok = Tokenizer.from_str(train_byte_bpe(_corpus(), 600, LLAMA3_SPECIAL))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return HFTokenizer(tok.to_str(), bos=LLAMA3_SPECIAL[0], eos=LLAMA3_SPECIAL[1])


def _sentencepiece():
    return train_sentencepiece(_corpus(), vocab_size=400)


KINDS = {"byte_level": _gpt2_style, "llama3_style": _llama3_style, "sentencepiece": _sentencepiece}


@pytest.fixture(scope="module", params=sorted(KINDS))
def tok(request):
    return KINDS[request.param]()


def _texts(group, tokenizer) -> list[str]:
    return [tokenizer.decode(np.concatenate([group.prompt, c])) for c in group.completions]


def _expected(example, data: sources.Dataset, other=None) -> list[str]:
    """The texts the template renders from the example (and KTO's mismatched completion)."""
    head = data.prompt_text()(example.prompt)
    reply = data.completion_text()
    if isinstance(example, PairedExample):
        return [head + reply(example.prompt, example.chosen),
                head + reply(example.prompt, example.rejected)]
    out = [head + reply(example.prompt, example.completion)]
    if other is not None:
        out.append(head + reply(example.prompt, other.completion))
    return out


def _check(data: sources.Dataset, tokenizer) -> tuple[list, list, list]:
    """(examples, groups, mismatches) of one dataset under one tokenizer."""
    examples = data.examples()
    groups = data.load(tokenizer)
    assert len(groups) == len(examples)
    bad = []
    for i, (e, g) in enumerate(zip(examples, groups)):
        other = examples[(i + 1) % len(examples)] if len(g.completions) == 2 and not \
            isinstance(e, PairedExample) else None
        got, want = _texts(g, tokenizer), _expected(e, data, other)
        if got != want:
            bad.append((e.meta.get("file"), e.meta.get("line"), got, want))
    return examples, groups, bad


@pytest.mark.skipif(not HH_TEST.exists(), reason=f"shared HH-RLHF split not present at {HH_TEST}")
def test_every_hh_rlhf_pair_decodes_to_its_transcript(tok):
    data = sources.Dataset(source=sources.HHRLHF(subset="harmless-base", split="test"),
                           template=sources.Transcript(), manual_dir=str(SHARED_HH),
                           on_error="skip")
    examples, groups, bad = _check(data, tok)
    assert (len(examples), bad[:2]) == (2308, [])
    # On this file the rendered text is the released transcript itself, byte for byte: every
    # record has the canonical "...\n\nAssistant: reply" form.
    with gzip.open(HH_TEST, "rt", encoding="utf-8") as f:
        originals = [json.loads(line) for line in f]
    verbatim = sum(
        _texts(g, tok) == [originals[e.meta["line"] - 1]["chosen"],
                           originals[e.meta["line"] - 1]["rejected"]]
        for e, g in zip(examples, groups)
    )
    assert verbatim == 2308


def _fixture_dirs(root: Path) -> dict[str, Path]:
    write_jsonl(root / "uf" / "flan.jsonl", [fx.UF_RECORD])
    for split in ("train", "validation", "test"):
        write_jsonl(root / "shp" / "askculinary" / f"{split}.json", [fx.shp_record()])
    from fbjax.data import oasst1, slf5k

    write_jsonl(root / "oasst" / oasst1.TREES_FILE, [fx.oasst_tree()])
    for split in ("train", "test"):
        write_jsonl(root / "pku" / "data" / "Alpaca-7B" / f"{split}.jsonl", [fx.pku_record()])
    write_jsonl(root / "tldr" / "batch9.json", [fx.tldr_record()])
    for file in slf5k.SPLIT_FILES.values():
        write_jsonl(root / "slf" / file, [fx.slf_record()])
    return {k: root / k for k in ("uf", "shp", "oasst", "pku", "tldr", "slf")}


FIXTURE_SOURCES = {
    "ultrafeedback_paired": ("uf", lambda: sources.UltraFeedback(view="paired"), encode.paired),
    "ultrafeedback_binary": ("uf", lambda: sources.UltraFeedback(view="binary"), encode.unpaired),
    "shp": ("shp", lambda: sources.SHP(), encode.paired),
    "oasst1": ("oasst", lambda: sources.RankedAsPairs(source=sources.OASST1()), encode.paired),
    "pku_safer": ("pku", lambda: sources.PKUSafeRLHF(view="safer"), encode.paired),
    "pku_negative": ("pku", lambda: sources.PKUSafeRLHF(view="negative"), encode.negative),
    "tldr": ("tldr", lambda: sources.TLDRComparisons(), encode.paired),
    "slf5k_paired": ("slf", lambda: sources.SLF5K(view="paired"), encode.paired),
}
TEMPLATES = {"default": None, "transcript": sources.Transcript(), "plain_chat": sources.Chat(PLAIN),
             "gemma_chat": sources.Chat(GEMMA)}


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_reader_decodes_to_the_rendered_text(tok, template, tmp_path):
    tokenizer = tok.with_added_tokens(GEMMA.special_tokens)
    dirs = _fixture_dirs(tmp_path)
    checked = 0
    for name, (folder, make, encoder) in FIXTURE_SOURCES.items():
        data = sources.Dataset(source=make(), encoder=encoder, template=TEMPLATES[template],
                               manual_dir=str(dirs[folder]))
        examples, _, bad = _check(data, tokenizer)
        assert examples and bad == [], (name, bad[:1])
        checked += len(examples)
    assert checked >= 9
    # The rendered texts are what they should be, not merely self-consistent: a transcript
    # reply follows "Assistant:" after one space, a Gemma reply ends with its end-of-turn marker.
    data = sources.Dataset(source=sources.SHP(), template=TEMPLATES[template],
                           manual_dir=str(dirs["shp"]))
    text = _texts(data.load(tokenizer)[0], tokenizer)[0]
    want = {
        "default": "How do I keep pasta from sticking?Use plenty of water and stir early.",
        "transcript": "\n\nHuman: How do I keep pasta from sticking?\n\nAssistant: Use plenty of "
                      "water and stir early.",
        "plain_chat": "Human: How do I keep pasta from sticking?\n\nAssistant: Use plenty of water "
                      "and stir early.",
        "gemma_chat": "<start_of_turn>user\nHow do I keep pasta from sticking?<end_of_turn>\n"
                      "<start_of_turn>model\nUse plenty of water and stir early.<end_of_turn>",
    }[template]
    assert text == want

