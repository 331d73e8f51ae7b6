"""A small CLIP tokenizer for the ``captioned-digits`` grammar, written as the standard files
(``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``) that
``transformers.CLIPTokenizer.from_pretrained(folder)`` and Diffusers' pipeline folders expect.

The vocabulary is CLIP's byte-level base (the 256 byte symbols, alone and word-final with ``</w>``), one token per
word of the grammar (``a``, ``on``, ``background``, the colour words, ``zero`` ... ``nine``; numerals are single
characters) reached by the merges of :func:`word_merges`, and the special tokens ``<|startoftext|>`` /
``<|endoftext|>``. So every caption of the grammar tokenises to whole-word tokens, and any other word still
tokenises (into byte symbols) instead of becoming unknown: a new word can be taught (e.g. with LoRA).
"""

from __future__ import annotations

import json
import os

from ..training.captioned_digits import COLOR_NAMES, DIGIT_WORDS

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS: tuple[str, ...] = ("a", "on", "background", *COLOR_NAMES, *DIGIT_WORDS)
"""The grammar's words, each one token."""


def byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) uses for the bytes 0..255, in byte order:
    printable Latin-1 bytes stand for themselves, the others take the code points from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    kept, extra, out = set(keep), 256, []
    for b in range(256):
        if b in kept:
            out.append(chr(b))
        else:
            out.append(chr(extra))
            extra += 1
    return out


def bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair merging as CLIP's tokenizer does it: merge the adjacent pair of lowest rank (leftmost on a
    tie) until no pair of ``symbols`` is in ``ranks``."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
    return symbols


def word_merges(words: tuple[str, ...] = WORDS) -> list[tuple[str, str]]:
    """Merges that make each of ``words`` (ASCII) one token: word by word, what the merges so far leave of the
    word is joined left to right by new merges. A new merge ranks after every older one, so it never changes
    how an earlier word is merged (that always had an older merge to apply until it was one token)."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        parts = bpe([*word[:-1], word[-1] + "</w>"], ranks)
        for right in parts[1:]:
            pair = (parts[0], right)
            ranks[pair] = len(merges)
            merges.append(pair)
            parts[0] += right
    return merges


def write_digits_tokenizer(folder: str | os.PathLike, model_max_length: int = 16) -> int:
    """Write the tokenizer files into ``folder`` (created if needed); returns the vocabulary size.

    ``model_max_length`` is the padded prompt length (the longest caption of the grammar is 9 tokens with
    ``<|startoftext|>`` and ``<|endoftext|>``; Stable Diffusion uses 77).
    """
    if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 9:
        raise ValueError(f"model_max_length must be an int >= 9 (the longest caption), got {model_max_length!r}")
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    symbols = byte_symbols()
    merges = word_merges()
    vocab = [*symbols, *(s + "</w>" for s in symbols)]
    vocab += [a + b for a, b in merges if a + b not in vocab]
    vocab += [BOS, EOS]
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    files = {
        "vocab.json": json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False, indent=0),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text + ("" if text.endswith("\n") else "\n"))
    return len(vocab)
