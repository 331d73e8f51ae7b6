"""from_single_file: tiny checkpoints written in the original CompVis/LDM key layout load into the same models,
with configs inferred from shapes or read from a local folder, from .safetensors or .ckpt (weights_only)."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import torchdiffusion as td
from tests.sd_fixtures import (
    SCHEDULER_KWARGS,
    clip_to_ldm,
    clip_to_openclip,
    pipeline_to_ldm,
    tiny_text_encoder,
    tiny_tokenizer,
    unet_to_ldm,
    vae_to_ldm,
)
from torchdiffusion.single_file import load_checkpoint
from torchdiffusion.single_file_convert import build_text_encoder

pytest.importorskip("transformers")

# Shapes that follow SD's rules (32 norm groups, 8 heads with conv projections) so shape inference is exact.
UNET = dict(
    sample_size=64,
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
VAE = dict(
    sample_size=512,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    return dict(
        unet=td.UNet2DConditionModel(**UNET).eval(),
        vae=td.AutoencoderKL(**VAE).eval(),
        text_encoder=tiny_text_encoder(tokenizer, hidden_size=64, num_attention_heads=1),
        tokenizer=tokenizer,
    )


@pytest.fixture(scope="module")
def ckpt_path(parts, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "sd-tiny.safetensors"
    state = unet_to_ldm(parts["unet"].state_dict(), 1)
    state.update(vae_to_ldm(parts["vae"].state_dict()))
    state.update(clip_to_ldm(parts["text_encoder"].state_dict()))
    state["model_ema.decay"] = torch.tensor(0.999)
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


def _same_model(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0)


def test_unet_and_vae_with_configs_inferred_from_shapes(parts, ckpt_path):
    unet = td.UNet2DConditionModel.from_single_file(ckpt_path)
    for key, value in UNET.items():
        assert unet.config[key] == (list(value) if isinstance(value, tuple) else value), key
    _same_model(unet, parts["unet"])
    vae = td.AutoencoderKL.from_single_file(ckpt_path)
    assert vae.config.scaling_factor == 0.18215
    _same_model(vae, parts["vae"])
    assert td.AutoencoderKL.from_single_file(ckpt_path, torch_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_ckpt_read_with_weights_only(parts, ckpt_path, tmp_path):
    state = load_checkpoint(ckpt_path)
    torch.save({"state_dict": state, "global_step": 10}, tmp_path / "sd.ckpt")
    _same_model(td.UNet2DConditionModel.from_single_file(tmp_path / "sd.ckpt"), parts["unet"])
    _same_model(td.AutoencoderKL.from_single_file(state), parts["vae"])  # a state dict works too


def test_config_from_a_local_folder_and_overrides(parts, ckpt_path, tmp_path):
    parts["unet"].save_config(tmp_path / "unet")
    unet = td.UNet2DConditionModel.from_single_file(ckpt_path, config=tmp_path, subfolder="unet")
    _same_model(unet, parts["unet"])
    unet = td.UNet2DConditionModel.from_single_file(ckpt_path, config=tmp_path / "unet", upcast_attention=True)
    assert unet.config.upcast_attention is True


def test_pipeline_from_single_file_gives_the_original_images(parts, ckpt_path):
    scheduler = td.PNDMScheduler(**SCHEDULER_KWARGS)
    original = td.StableDiffusionPipeline(**parts, scheduler=scheduler, requires_safety_checker=False)
    loaded = td.StableDiffusionPipeline.from_single_file(ckpt_path, tokenizer=parts["tokenizer"])
    assert type(loaded.scheduler) is td.PNDMScheduler and loaded.scheduler.config.steps_offset == 1
    assert loaded.safety_checker is None
    images = []
    for pipe in (original, loaded):
        pipe.set_progress_bar_config(disable=True)
        images.append(
            pipe("the cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
        )
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)
    img2img = td.StableDiffusionImg2ImgPipeline.from_single_file(
        ckpt_path, tokenizer=parts["tokenizer"], torch_dtype={"unet": torch.bfloat16, "default": torch.float32}
    )
    assert img2img.unet.dtype == torch.bfloat16 and img2img.vae.dtype == torch.float32


def test_sd2_openclip_text_encoder_and_default_scheduler(parts, tmp_path):
    torch.manual_seed(1)
    text = tiny_text_encoder(
        parts["tokenizer"], hidden_size=64, num_attention_heads=1, hidden_act="gelu", num_hidden_layers=2
    )
    state = clip_to_openclip(text.state_dict())  # three blocks: the last one is dropped, as SD 2 does
    loaded = build_text_encoder(state)
    assert loaded.config.num_hidden_layers == 2 and loaded.config.hidden_act == "gelu"
    ids = parts["tokenizer"](["a photo of the cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], text(ids)[0])
    unet = td.UNet2DConditionModel(**{**UNET, "use_linear_projection": True, "attention_head_dim": [1, 1]})
    full = unet_to_ldm(unet.state_dict(), 1) | vae_to_ldm(parts["vae"].state_dict()) | state
    pipe = td.StableDiffusionPipeline.from_single_file(full, tokenizer=parts["tokenizer"])
    assert type(pipe.scheduler) is td.DDIMScheduler and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.config.use_linear_projection is True
    _same_model(pipe.unet, unet)


def test_diffusers_layout_folder_as_config(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from tests.sd_fixtures import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "sd")
    ref = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    save_file(pipeline_to_ldm(ref), tmp_path / "m.safetensors")
    pipe = td.StableDiffusionInpaintPipeline.from_single_file(tmp_path / "m.safetensors", config=folder)
    assert pipe.unet.config.norm_num_groups == 4 and type(pipe.scheduler) is td.PNDMScheduler
    _same_model(pipe.vae, ref.vae)


def test_errors_name_what_is_wrong(parts, ckpt_path, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        td.UNet2DConditionModel.from_single_file("https://huggingface.co/x/y/blob/main/model.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        td.AutoencoderKL.from_single_file(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="original_config"):
        td.UNet2DConditionModel.from_single_file(ckpt_path, original_config="v1-inference.yaml")
    with pytest.raises(ValueError, match="config"):
        td.UNet2DConditionModel.from_single_file(ckpt_path, config=tmp_path / "nowhere")
    state = load_checkpoint(ckpt_path)
    state["model.diffusion_model.input_blocks.1.7.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"input_blocks\.1\.7"):
        td.UNet2DConditionModel.from_single_file(state)
    with pytest.raises(ValueError, match="no unet"):
        td.UNet2DConditionModel.from_single_file({"foo": torch.zeros(1)})
    with pytest.raises(TypeError, match="not_a_component"):
        td.StableDiffusionPipeline.from_single_file(ckpt_path, not_a_component=1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and a repo name no cache holds: the lookup stays local
    monkeypatch.setattr("torchdiffusion.single_file._CLIP_TOKENIZERS", {"clip": ("nobody/no-such-tokenizer", None)})
    with pytest.raises(ValueError, match="tokenizer"):
        td.StableDiffusionPipeline.from_single_file(ckpt_path, local_files_only=True)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(OSError, match="weights_only"):
        load_checkpoint(bad)
