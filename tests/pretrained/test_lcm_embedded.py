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
