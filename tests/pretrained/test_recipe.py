"""The embedded model's recipe at tiny scale (every stage for a few steps), its folder loading here and in Diffusers
with the same images, the yardstick on its images, the name that resolves to the package folder, and the CLI."""

import json
import os

import pytest
import torch

import torchdiffusion as td
from torchdiffusion import cli
from torchdiffusion.pretrained import EMBEDDED_MODEL, embedded_model_path, recipe, resolve_embedded, stages

pytest.importorskip("transformers")
pytest.importorskip("sklearn")

TOL = 2e-3


def _shipped():
    try:
        return embedded_model_path()
    except FileNotFoundError:
        return None


def test_tiny_recipe_writes_a_stable_diffusion_folder(tiny_model):
    out, summary = tiny_model
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
        assert (out / part).is_dir(), part
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= set(os.listdir(out / "tokenizer"))
    assert summary["vae"]["steps"] == summary["text_encoder"]["steps"] == summary["unet"]["steps"] == 3
    assert summary["safetensors_bytes"] == recipe.folder_weight_bytes(str(out)) > 0
    card = (out / "README.md").read_text()
    assert "torchdiffusion pretrain-embedded" in card and "held_out_accuracy" in card and "**no**" in card
    vae = td.AutoencoderKL.from_pretrained(out / "vae")
    assert vae.config.scaling_factor == summary["vae"]["scaling_factor"]
    for split in ("in_distribution", "held_out"):
        assert summary["evaluation"][split]["num_images"] == recipe.TINY.yardstick_prompts


def test_tiny_folder_same_images_in_diffusers(tiny_model):
    diffusers = pytest.importorskip("diffusers")
    out, _ = tiny_model
    for folder in (out, _shipped()):
        if folder is None:
            continue
        theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
        ours = td.StableDiffusionPipeline.from_pretrained(folder)
        images = []
        for pipe in (theirs, ours):
            pipe.set_progress_bar_config(disable=True)
            images.append(pipe(["a red 7 on a blue background", "seven"], num_inference_steps=4, output_type="np",
                               generator=torch.Generator().manual_seed(0)).images)  # fmt: skip
        assert images[1].shape == (2, 32, 32, 3)
        assert abs(images[0] - images[1]).max() <= TOL


def test_yardstick_smoke_on_generated_images(tiny_model):
    from torchdiffusion.training.text_yardstick import TextToImageYardstick

    out, _ = tiny_model
    pipe = td.StableDiffusionPipeline.from_pretrained(_shipped() or out)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red 3 on a white background", "a green 4", "a 1 on a black background", "nine"]
    images = pipe(prompts, num_inference_steps=3, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    score = TextToImageYardstick(epochs=1, images_per_epoch=64).score(images, prompts, value_range=(0, 1),
                                                                      reference_size=8)  # fmt: skip
    assert score["num_images"] == 4 and 0 <= score["digit_accuracy"] <= 1
    assert 0 <= score["held_out_accuracy"] <= 1  # "a green 4" names a held-out pair


def test_embedded_name_resolves_to_the_package_folder(tmp_path, monkeypatch):
    assert resolve_embedded("some/folder") == "some/folder"
    assert resolve_embedded(tmp_path) == tmp_path
    with pytest.raises(ValueError, match="name"):
        embedded_model_path("torchdiffusion/other")
    folder = _shipped()
    if folder is None:
        with pytest.raises(FileNotFoundError, match="pretrain-embedded"):
            embedded_model_path()
        return
    assert resolve_embedded(EMBEDDED_MODEL) == folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = td.StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL)
    assert pipe.unet.config.sample_size == 8 and type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert td.UNet2DConditionModel.from_pretrained(EMBEDDED_MODEL, subfolder="unet").config.in_channels == 4


def test_shipped_model_is_small_and_documented():
    folder = _shipped()
    if folder is None:
        pytest.skip("this build ships no trained embedded model")
    assert recipe.folder_weight_bytes(folder) <= 20 * 2**20
    card = open(os.path.join(folder, "README.md"), encoding="utf-8").read()
    assert "torchdiffusion pretrain-embedded" in card and "in_distribution" in card


def test_cli_generate_splits_model_and_prompt(tmp_path):
    assert cli.split_model_and_prompt(None, None) == (EMBEDDED_MODEL, None)
    assert cli.split_model_and_prompt("a red 7 on a blue background", None) == (EMBEDDED_MODEL,
                                                                                 "a red 7 on a blue background")
    assert cli.split_model_and_prompt("seven", None) == (EMBEDDED_MODEL, "seven")
    assert cli.split_model_and_prompt(str(tmp_path), None) == (str(tmp_path), None)
    assert cli.split_model_and_prompt("owner/model", "a cat") == ("owner/model", "a cat")


def test_cli_generate_grid_and_one_png_per_image(tiny_model, tmp_path, capsys):
    out, _ = tiny_model
    args = [str(out), "a red 7 on a blue background", "--num-images", "3", "--seed", "1", "--steps", "3",
            "--guidance-scale", "3", "--scheduler", "euler", "--negative-prompt", "a 1"]  # fmt: skip
    assert cli.main(["generate", *args, "--out", str(tmp_path / "g.png"), "--out-dir", str(tmp_path / "each")]) == 0
    assert (tmp_path / "g.png").is_file()
    assert sorted(os.listdir(tmp_path / "each")) == ["image_000.png", "image_001.png", "image_002.png"]
    from PIL import Image

    assert Image.open(tmp_path / "each" / "image_000.png").size == (32, 32)
    assert cli.main(["generate", *args, "--out-dir", str(tmp_path / "only")]) == 0
    assert len(os.listdir(tmp_path / "only")) == 3 and not (tmp_path / "grid.png").exists()


def test_cli_generate_fast_preset(tiny_model, tmp_path, monkeypatch):
    """--fast passes the preset's options to the call (its steps unless --steps is given)."""
    from torchdiffusion.pipelines import generate as gen
    from torchdiffusion.pipelines.speed_options import FAST_PRESET

    seen = []
    real = gen.generate_text_images

    def spy(pipe, prompt, num_images, steps, **kw):
        seen.append((steps, kw["speed_options"]))
        return real(pipe, prompt, num_images, steps, **kw)

    monkeypatch.setattr(gen, "generate_text_images", spy)
    out, _ = tiny_model
    assert cli.main(["generate", str(out), "a red 7", "--fast", "--out", str(tmp_path / "f.png")]) == 0
    assert cli.main(["generate", str(out), "a red 7", "--fast", "--steps", "3", "--out", str(tmp_path / "g.png")]) == 0
    options = {k: v for k, v in FAST_PRESET.items() if k != "num_inference_steps"}
    assert seen == [(FAST_PRESET["num_inference_steps"], options), (3, options)]
    assert cli.main(["generate", str(out), "a red 7", "--steps", "0", "--out", str(tmp_path / "h.png")]) == 2


def test_recipe_bad_inputs_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="minutes"):
        recipe.pretrain_embedded(tmp_path / "m", minutes=0)
    with pytest.raises(ValueError, match="minutes"):
        recipe.pretrain_embedded(tmp_path / "m", minutes=True)
    with pytest.raises(ValueError, match="output_dir"):
        recipe.pretrain_embedded("", minutes=1)
    assert cli.main(["pretrain-embedded", "--output-dir", str(tmp_path / "m"), "--minutes", "soon"]) == 2


def test_multi_positive_contrastive_pieces():
    asks = stages.caption_asks(["a red 7", "7", "a 7 on a blue background"])
    assert asks.tolist() == [[7, 2, -1], [7, -1, -1], [7, -1, 4]]
    labels = torch.tensor([[7, 2, 4], [7, 3, 4], [1, 2, 4]])
    assert stages.fits(asks, labels).tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    logits = torch.zeros(3, 3)
    loss = stages.multi_positive_loss(logits, stages.fits(asks, labels))
    assert torch.isfinite(loss)


def test_step_budget_refits_max_steps_from_recent_speed():
    from types import SimpleNamespace

    trainer = SimpleNamespace(config=SimpleNamespace(max_steps=10_000), step=0)
    budget = recipe.StepBudget(trainer, deadline=1000.0, window=100.0)
    assert budget.refit(0.0, 0) == 10_000  # no steps yet: unchanged
    budget.refit(100.0, 10)
    assert budget.refit(200.0, 110) == 110 + 800  # 1 step/s over the window, 800 s left
    assert budget.refit(300.0, 410) == 410 + 700 * 3  # the speed of the last 100 s only
    assert budget.refit(400.0, 2000) == 10_000  # never above the ceiling
    assert budget.refit(1200.0, 2100) == 2101  # past the deadline: stop at the next step
    with recipe.StepBudget(trainer, deadline=None):  # no deadline: no thread
        pass
