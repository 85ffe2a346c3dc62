"""The CLIP tokenizer files built from open_clip's vocabulary tokenize exactly like CLIP."""

import pytest
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizer

from distill.diffusion.tokenizer import clip_vocab_and_merges, write_clip_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path_factory.mktemp("tok")))


def test_vocab_size_and_specials():
    vocab, merges = clip_vocab_and_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


@pytest.mark.parametrize(
    "text",
    [
        "An image of golden retriever",
        "An image of .",
        "An image of Shih-Tzu",
        "T-shirt/top, ankle boot; café 42%",
        "OLD ENGLISH sheepdog!!",
    ],
)
def test_matches_open_clip(tok, text):
    ref = [49406, *SimpleTokenizer().encode(text), 49407]
    assert tok(text).input_ids == ref


def test_pads_to_77(tok):
    ids = tok(["An image of ."], padding="max_length", max_length=77, truncation=True).input_ids[0]
    assert len(ids) == 77 and ids[-1] == 49407
