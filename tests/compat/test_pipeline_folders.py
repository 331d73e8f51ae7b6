"""Folders written by Diffusers load here with the same numbers, and ours load in Diffusers."""

import numpy as np
import pytest
import torch

import torchdiffusion as td
from tests.helpers import perturb_

diffusers = pytest.importorskip("diffusers")

UNET_CONFIGS = {
    "butterflies": dict(  # the butterflies tutorial, narrowed
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(8, 16, 16, 32),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "mnist": dict(  # the MNIST tutorial, narrowed
        sample_size=12,
        in_channels=1,
        out_channels=1,
        layers_per_block=2,
        block_out_channels=(8, 16, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ),
    "class_scale_shift": dict(
        sample_size=8,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        num_class_embeds=5,
        resnet_time_scale_shift="scale_shift",
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ),
    "fourier": dict(
        sample_size=8,
        block_out_channels=(32, 64),
        norm_num_groups=4,
        layers_per_block=1,
        time_embedding_type="fourier",
        flip_sin_to_cos=False,
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
    ),
}


def _inputs(config, batch=2):
    g = torch.Generator().manual_seed(0)
    size = config["sample_size"]
    x = torch.randn(batch, config.get("in_channels", 3), size, size, generator=g)
    t = torch.tensor([10, 500])[:batch]
    labels = torch.tensor([1, 3])[:batch] if config.get("num_class_embeds") else None
    return x, t, labels


@pytest.mark.parametrize("name", sorted(UNET_CONFIGS))
@pytest.mark.parametrize(
    "save_kwargs", [{}, {"max_shard_size": "20KB"}, {"variant": "fp16"}], ids=["single", "sharded", "fp16"]
)
def test_unet_folders_both_ways(tmp_path, name, save_kwargs):
    config = UNET_CONFIGS[name]
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DModel(**config).eval())
    if "variant" in save_kwargs:
        theirs = theirs.half().float()  # values representable in fp16 so both sides compare exactly
    theirs.save_pretrained(tmp_path / "d", **save_kwargs)
    load_kwargs = {"variant": save_kwargs["variant"]} if "variant" in save_kwargs else {}
    ours = td.UNet2DModel.from_pretrained(tmp_path / "d", **load_kwargs)
    x, t, labels = _inputs(config)
    with torch.no_grad():
        expected = theirs(x, t, class_labels=labels).sample
        got = ours(x, t, class_labels=labels).sample
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        ours.save_pretrained(tmp_path / "o", **save_kwargs)
        back = diffusers.UNet2DModel.from_pretrained(tmp_path / "o", **load_kwargs)
        torch.testing.assert_close(back(x, t, class_labels=labels).sample, expected, atol=1e-4, rtol=1e-4)


def test_legacy_attention_names_load_in_both(tmp_path):
    from safetensors.torch import save_file

    config = UNET_CONFIGS["mnist"]
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DModel(**config).eval())
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    state = {}
    for k, v in theirs.state_dict().items():
        for new, old in renames.items():
            k = k.replace(new, old)
        state[k] = v.contiguous()
    assert any(".query." in k for k in state)
    theirs.save_config(tmp_path)
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    ours = td.UNet2DModel.from_pretrained(tmp_path)
    x, t, _ = _inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t).sample, theirs(x, t).sample, atol=1e-4, rtol=1e-4)


def _ddpm_folder(lib, path, scheduler_cls="DDPMScheduler"):
    torch.manual_seed(0)
    unet = perturb_(lib.UNet2DModel(**UNET_CONFIGS["mnist"]).eval())
    scheduler = getattr(lib, scheduler_cls)(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    pipe = lib.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.save_pretrained(path)
    return pipe


@pytest.mark.parametrize("writer", ["diffusers", "ours"])
@pytest.mark.parametrize("pipeline", ["DDPMPipeline", "DDIMPipeline"])
def test_pipeline_folders_load_in_both_with_same_images(tmp_path, writer, pipeline):
    _ddpm_folder(diffusers if writer == "diffusers" else td, tmp_path)
    a = getattr(diffusers, pipeline).from_pretrained(tmp_path)
    b = getattr(td, pipeline).from_pretrained(tmp_path)
    for p in (a, b):
        p.set_progress_bar_config(disable=True)
    out = []
    for p in (a, b):
        kwargs = {"eta": 0.0} if pipeline == "DDIMPipeline" else {}
        out.append(
            p(
                batch_size=2,
                num_inference_steps=10,
                generator=torch.Generator().manual_seed(3),
                output_type="np",
                **kwargs,
            ).images
        )
    np.testing.assert_allclose(out[1], out[0], atol=1e-4)


def test_diffusion_pipeline_picks_class_from_index(tmp_path):
    _ddpm_folder(diffusers, tmp_path)
    assert type(td.DiffusionPipeline.from_pretrained(tmp_path)) is td.DDPMPipeline
