import json
import os

import pytest

from torchdiffusion.pretrained.tokenizer import WORDS, bpe, byte_symbols, word_merges, write_digits_tokenizer
from torchdiffusion.training.captioned_digits import grammar_prompts

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    write_digits_tokenizer(folder)
    return str(folder)


def test_writes_the_standard_files(folder):
    names = {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"}
    assert names <= set(os.listdir(folder))
    vocab = json.load(open(os.path.join(folder, "vocab.json"), encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert {"<|startoftext|>", "<|endoftext|>", "background</w>", "seven</w>", "7</w>", "a</w>"} <= set(vocab)
    merges = open(os.path.join(folder, "merges.txt"), encoding="utf-8").read().splitlines()
    assert merges[0].startswith("#version") and all("".join(m.split()) in vocab for m in merges[1:])
    config = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    assert config["tokenizer_class"] == "CLIPTokenizer" and config["model_max_length"] == 16


@pytest.mark.parametrize("cls_name", ["CLIPTokenizer", "CLIPTokenizerFast"])
def test_transformers_loads_it_and_every_caption_is_whole_words(folder, cls_name):
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        pytest.skip(f"transformers has no {cls_name}")
    tok = cls.from_pretrained(folder)
    assert tok.bos_token == "<|startoftext|>" and tok.eos_token == tok.pad_token == tok.unk_token == "<|endoftext|>"
    assert tok.model_max_length == 16
    vocab = tok.get_vocab()
    for prompt in grammar_prompts("in_distribution") + grammar_prompts("held_out"):
        tokens = tok.tokenize(prompt.text)
        assert tokens == [w + "</w>" for w in prompt.text.split()], prompt.text
        ids = tok(prompt.text, padding="max_length", max_length=tok.model_max_length).input_ids
        assert len(ids) == 16 and ids[0] == tok.bos_token_id and ids[len(tokens) + 1] == tok.eos_token_id
        assert tok.unk_token_id not in ids[1 : len(tokens) + 1]
        assert all(t in vocab for t in tokens)
        assert tok.decode(ids, skip_special_tokens=True) == prompt.text
    # a word outside the grammar still tokenises (into byte symbols), never into the unknown token
    ids = tok("a pink 7 on a striped background").input_ids
    assert tok.unk_token_id not in ids[1:-1] and len(ids) == 2 + 1 + 4 + 1 + 2 + 7 + 1


def test_bpe_merges_make_each_word_one_symbol():
    ranks = {pair: i for i, pair in enumerate(word_merges())}
    for word in WORDS:
        assert bpe([*word[:-1], word[-1] + "</w>"], ranks) == [word + "</w>"]
    assert len(set(byte_symbols())) == 256 and byte_symbols()[ord("a")] == "a"


def test_bad_model_max_length_is_named(tmp_path):
    for bad in (8, "16", True):
        with pytest.raises(ValueError, match="model_max_length"):
            write_digits_tokenizer(tmp_path, model_max_length=bad)
    assert write_digits_tokenizer(tmp_path / "long", model_max_length=77) > 512
