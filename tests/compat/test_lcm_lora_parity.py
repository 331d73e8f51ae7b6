"""Few-step sampling with ``LCMScheduler`` on the three Stable Diffusion pipelines (text-to-image, image-to-image,
inpainting) against the real Diffusers: 2 and 4 steps, without and with an LCM-LoRA that Diffusers + peft wrote the
way its LCM-LoRA script does (peft key layout; attention, feed-forward, projections and convolutions), the same
images (<= 2e-3). ``guidance_scale`` 1 (the LCM-LoRA setting) runs one UNet batch, not a guidance pair."""

import numpy as np
import pytest
import torch
from PIL import Image

import torchdiffusion as td

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

TOL = 2e-3
LCM_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
               "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]  # fmt: skip


def _diffusers_lcm_lora(folder, out, seed=0):
    """An LCM-LoRA-shaped file written by Diffusers: adapters on its UNet (randomised up weights), saved from
    ``get_peft_model_state_dict`` as its ``train_lcm_distill_lora_sd_wds.py`` does."""
    from peft.utils import get_peft_model_state_dict

    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LCM_TARGETS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    diffusers.StableDiffusionPipeline.save_lora_weights(str(out), unet_lora_layers=get_peft_model_state_dict(unet))
    return str(out)


def _pair(cls_name, folder):
    theirs = getattr(diffusers, cls_name).from_pretrained(folder)
    ours = getattr(td, cls_name).from_pretrained(folder)
    theirs.scheduler = diffusers.LCMScheduler.from_config(theirs.scheduler.config)
    ours.scheduler = td.LCMScheduler.from_config(ours.scheduler.config)
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return theirs, ours


def _picture(seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(64, 64, 3) * 255).astype("uint8"))


def _hole():
    m = np.zeros((64, 64), "uint8")
    m[:, 32:] = 255
    return Image.fromarray(m)


# one image per prompt: Diffusers then encodes image i with generator i, as we always do
CASES = {
    "StableDiffusionPipeline": {},
    "StableDiffusionImg2ImgPipeline": {"image": [_picture(), _picture(1)], "strength": 0.75},
    "StableDiffusionInpaintPipeline": {"image": [_picture(), _picture(1)], "mask_image": _hole()},
}


def _images(pipe, steps, guidance_scale=1.0, **kwargs):
    return pipe(["the cat", "a dog"], num_inference_steps=steps, guidance_scale=guidance_scale, output_type="np",
                generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images  # fmt: skip


@pytest.mark.parametrize("cls_name", sorted(CASES))
def test_lcm_sampling_with_a_diffusers_lcm_lora_matches_diffusers(cls_name, tiny_sd_folder, tiny_sd_inpaint_folder,
                                                                   tmp_path):  # fmt: skip
    folder = tiny_sd_inpaint_folder if "Inpaint" in cls_name else tiny_sd_folder
    theirs, ours = _pair(cls_name, folder)
    kwargs = CASES[cls_name]
    plain = {}
    for steps in (2, 4):
        plain[steps] = _images(ours, steps, **kwargs)
        assert np.abs(_images(theirs, steps, **kwargs) - plain[steps]).max() <= TOL, steps
    lora = _diffusers_lcm_lora(folder, tmp_path / "lcm")
    theirs.load_lora_weights(lora)
    ours.load_lora_weights(lora)
    for steps, guidance in ((2, 1.0), (4, 1.0), (4, 1.5)):
        mine = _images(ours, steps, guidance, **kwargs)
        assert np.abs(_images(theirs, steps, guidance, **kwargs) - mine).max() <= TOL, (steps, guidance)
        if guidance == 1.0:
            assert np.abs(mine - plain[steps]).max() > 1e-2  # the LoRA changes the images


def test_guidance_scale_one_runs_a_single_unet_batch(tiny_sd_folder):
    pipe = td.StableDiffusionPipeline.from_pretrained(tiny_sd_folder)
    pipe.scheduler = td.LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    batches = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        pipe(["the cat", "a dog"], num_inference_steps=4, guidance_scale=1.0, output_type="latent")
        assert batches == [2] * 4 and not pipe.do_classifier_free_guidance
        batches.clear()
        pipe(["the cat", "a dog"], num_inference_steps=2, guidance_scale=1.5, output_type="latent")
        assert batches == [4] * 2
    finally:
        hook.remove()
