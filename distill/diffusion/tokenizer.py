"""CLIP tokenizer files built offline from the BPE vocabulary that ships with open_clip.

Stable Diffusion v1.x uses OpenAI CLIP's byte-level BPE (49,408 tokens). ``open_clip_torch``
ships its merge list (``bpe_simple_vocab_16e6.txt.gz``); this module turns it into the
``vocab.json`` / ``merges.txt`` pair that transformers' `CLIPTokenizer` loads, so tiny and
locally trained models get the real tokenizer without touching a model hub.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

# The merge list has 262,144 lines; CLIP uses the first 48,894 after the header
# (49,152 - 256 byte tokens - 2 specials), giving 256 + 256 + 48,894 + 2 = 49,408 tokens.
_N_MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-unicode table, which CLIP's BPE is built on."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _bpe_merges() -> list[str]:
    try:
        ref = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
        raw = ref.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise RuntimeError(
            "the CLIP BPE vocabulary ships with open_clip_torch: pip install open_clip_torch"
        ) from e
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return lines[1 : _N_MERGES + 1]


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (token -> id) and its ordered merge rules."""
    merges = _bpe_merges()
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_clip_tokenizer(out_dir: str | Path, model_max_length: int = 77) -> Path:
    """Write a loadable CLIP tokenizer folder (``CLIPTokenizer.from_pretrained(out_dir)``)."""
    from transformers import CLIPTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(
        vocab=str(out / "vocab.json"),
        merges=str(out / "merges.txt"),
        model_max_length=model_max_length,
    )
    tok.save_pretrained(out)
    return out
