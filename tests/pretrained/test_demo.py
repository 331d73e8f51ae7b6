"""`torchdiffusion demo`: the prompt grid, the new-colour folder, LoRA before/after (on the tiny recipe's model)."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from torchdiffusion import cli
from torchdiffusion.pretrained import demo
from torchdiffusion.training.captioned_digits import CaptionedDigitsDataset
from torchdiffusion.training.sources import load_captioned_dataset

pytest.importorskip("peft")
pytest.importorskip("sklearn")


def test_new_colour_folder_is_a_captioned_folder_in_the_new_colour(tmp_path):
    folder = demo.write_new_colour_folder(tmp_path / "pink", num_images=12, seed=3)
    rows = [json.loads(line) for line in open(os.path.join(folder, "metadata.jsonl"), encoding="utf-8")]
    assert len(rows) == 12 and all(r["text"].startswith("a pink ") for r in rows)
    assert all(os.path.isfile(os.path.join(folder, r["file_name"])) for r in rows)
    data = load_captioned_dataset(folder, 32)
    assert len(data) == 12 and data[0]["images"].shape == (3, 32, 32)
    images = torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(folder, r["file_name"])))).permute(
        2, 0, 1).float() / 255 for r in rows])  # fmt: skip
    assert demo.new_colour_share(images) == 1.0  # every digit reads as pink
    again = demo.write_new_colour_folder(tmp_path / "again", num_images=12, seed=3)
    assert open(os.path.join(again, "metadata.jsonl")).read() == open(os.path.join(folder, "metadata.jsonl")).read()


def test_new_colour_share_is_zero_on_palette_digits():
    images = (CaptionedDigitsDataset("train", 32, seed=1).images() + 1) / 2
    assert demo.new_colour_share(images) <= 0.05


@pytest.mark.parametrize("kwargs, name", [({"word": "red"}, "word"), ({"word": "two words"}, "word"),
                                          ({"rgb": (1, 2)}, "rgb"), ({"rgb": (0, 0, 300)}, "rgb")])  # fmt: skip
def test_new_colour_folder_bad_inputs_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        demo.write_new_colour_folder(tmp_path, num_images=2, **kwargs)


def test_demo_command_end_to_end(tiny_model, tmp_path, capsys):
    model, _ = tiny_model
    out = tmp_path / "demo"
    code = cli.main(["demo", "--output-dir", str(out), "--model", str(model), "--lora-minutes", "0.5",
                     "--lora-steps", "2"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "before" in printed and "after" in printed and "2 steps" in printed
    assert {"prompts.png", "prompts.txt", "before_after.png", "lora", "pink-digits"} <= set(os.listdir(out))
    assert os.path.isfile(out / "lora" / "pytorch_lora_weights.safetensors")
    grid = np.asarray(Image.open(out / "prompts.png").convert("L"), dtype=float)
    assert grid.shape[0] > 32 * len(demo.PROMPTS) and grid.std() > 1


@pytest.mark.parametrize("flag", ["--lora-minutes", "--lora-steps"])
def test_demo_bad_budget_names_the_flag(flag, capsys):
    assert cli.main(["demo", flag, "0"]) == 2
    assert flag in capsys.readouterr().err
