"""`torchdiffusion distill-lcm` with its defaults (the embedded model, 'captioned-digits') on the tiny recipe's
model standing in for the embedded one, then 4-step LCM sampling with the LoRA."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("peft")


def test_distill_lcm_defaults_to_the_embedded_model_and_captioned_digits(tiny_model, tmp_path, monkeypatch, capsys):
    import torchdiffusion as td
    from torchdiffusion.cli import main
    from torchdiffusion.pipelines import pipeline as pipeline_module
    from torchdiffusion.pretrained import EMBEDDED_MODEL

    folder, _ = tiny_model
    resolve = pipeline_module.resolve_embedded
    monkeypatch.setattr(pipeline_module, "resolve_embedded",
                        lambda name: str(folder) if name == EMBEDDED_MODEL else resolve(name))  # fmt: skip
    out = str(tmp_path / "lcm")
    args = ["distill-lcm", "--output-dir", out, "--steps", "2", "--batch-size", "4", "--no-cache-latents",
            "--validation-prompt", "a red 7 on a blue background", "--num-validation-images", "2",
            "--sample-steps", "2", "--no-progress"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    card = open(os.path.join(out, "README.md")).read()
    assert f"base_model: {EMBEDDED_MODEL}" in card and "a red 7 on a blue background" in card
    pipe = td.StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.scheduler = td.LCMScheduler.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe("a red 7", num_inference_steps=4, guidance_scale=1.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    pipe.load_lora_weights(out)
    lcm = pipe("a red 7", num_inference_steps=4, guidance_scale=1.0, output_type="np",
               generator=torch.Generator().manual_seed(0)).images  # fmt: skip
    assert lcm.shape == plain.shape == (1, 32, 32, 3) and np.isfinite(lcm).all()


def _shipped_lcm():
    from torchdiffusion.pretrained import embedded_lcm_lora_path, embedded_model_path

    try:
        embedded_model_path()
    except FileNotFoundError:
        pytest.skip("this build ships no embedded model")
    folder = embedded_lcm_lora_path()
    assert folder is not None, "the embedded model ships with its LCM-LoRA"
    return folder


def test_shipped_lcm_lora_gives_diffusers_images():
    """The shipped LCM-LoRA loads here and in Diffusers (peft) and gives the same 4-step images, unlike no LoRA."""
    diffusers = pytest.importorskip("diffusers")
    import torchdiffusion as td
    from torchdiffusion.pretrained import embedded_model_path

    lcm = _shipped_lcm()
    images = []
    for lib in (diffusers, td):
        pipe = lib.StableDiffusionPipeline.from_pretrained(embedded_model_path(), safety_checker=None)
        pipe.scheduler = lib.LCMScheduler.from_pretrained(lcm)
        pipe.set_progress_bar_config(disable=True)
        call = dict(num_inference_steps=4, guidance_scale=1.0, output_type="np")
        if lib is td:
            plain = pipe(["a green 4"], generator=torch.Generator().manual_seed(0), **call).images
        pipe.load_lora_weights(lcm)
        images.append(pipe(["a red 7 on a blue background", "a green 4"], generator=torch.Generator().manual_seed(0),
                           **call).images)  # fmt: skip
    assert abs(images[0] - images[1]).max() <= 2e-3
    assert abs(images[1][1] - plain[0]).mean() > 0.02  # the adapters change the image


def test_generate_fast_on_the_embedded_model_uses_its_lcm_lora(monkeypatch, tmp_path):
    """--fast on the embedded model: its LCM-LoRA, LCMScheduler, 4 steps, guidance 1, no speed options; the same
    with --lora naming an LCM-LoRA folder; with --scheduler it falls back to FAST_PRESET."""
    from torchdiffusion import cli
    from torchdiffusion.pipelines import generate as gen
    from torchdiffusion.pipelines.speed_options import FAST_PRESET

    _shipped_lcm()
    seen = []
    real = gen.generate_text_images

    def spy(pipe, prompt, num_images, steps, **kw):
        seen.append((type(pipe.scheduler).__name__, steps, kw["guidance_scale"], kw["speed_options"],
                     len(pipe.get_active_adapters())))  # fmt: skip
        return real(pipe, prompt, num_images, steps, **kw)

    monkeypatch.setattr(gen, "generate_text_images", spy)
    assert cli.main(["generate", "a green 4", "--fast", "--num-images", "2", "--out", str(tmp_path / "a.png")]) == 0
    assert seen[-1] == ("LCMScheduler", 4, 1.0, None, 1)
    assert cli.main(["generate", "a green 4", "--fast", "--steps", "2", "--out", str(tmp_path / "b.png")]) == 0
    assert seen[-1][:3] == ("LCMScheduler", 2, 1.0)
    lcm = _shipped_lcm()
    assert cli.main(["generate", "a green 4", "--fast", "--lora", lcm, "--out", str(tmp_path / "d.png")]) == 0
    assert seen[-1] == ("LCMScheduler", 4, 1.0, None, 1)  # a given LCM-LoRA folder: the same fast path
    assert cli.main(["generate", "a green 4", "--fast", "--scheduler", "dpm++", "--steps", "3",
                     "--out", str(tmp_path / "c.png")]) == 0  # fmt: skip
    options = {k: v for k, v in FAST_PRESET.items() if k != "num_inference_steps"}
    assert seen[-1] == ("DPMSolverMultistepScheduler", 3, 7.5, options, 0)
    # a Hub-style LCM-LoRA (the weights alone, no scheduler config): --scheduler lcm says what it is
    import shutil

    bare = tmp_path / "lcm-lora-bare"
    bare.mkdir()
    shutil.copy(os.path.join(lcm, "pytorch_lora_weights.safetensors"), bare)
    assert cli.main(["generate", "a green 4", "--fast", "--lora", str(bare), "--out", str(tmp_path / "e.png")]) == 0
    assert seen[-1][0] != "LCMScheduler" and seen[-1][1:] == (25, 7.5, options, 1)  # not recognised: the preset
    assert cli.main(["generate", "a green 4", "--fast", "--lora", str(bare), "--scheduler", "lcm",
                     "--out", str(tmp_path / "f.png")]) == 0  # fmt: skip
    assert seen[-1] == ("LCMScheduler", 4, 1.0, None, 1)


def test_is_lcm_lora_reads_the_scheduler_config_beside_the_weights(tmp_path):
    from torchdiffusion.pipelines.generate import is_lcm_lora as _is_lcm_lora

    assert not _is_lcm_lora(str(tmp_path))  # no scheduler_config.json
    (tmp_path / "scheduler_config.json").write_text('{"_class_name": "DDIMScheduler"}')
    assert not _is_lcm_lora(str(tmp_path))
    (tmp_path / "scheduler_config.json").write_text('{"_class_name": "LCMScheduler"}')
    assert _is_lcm_lora(str(tmp_path))
    assert not _is_lcm_lora(str(tmp_path / "pytorch_lora_weights.safetensors"))
