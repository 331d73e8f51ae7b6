"""LoRA on Stable Diffusion against the real Diffusers + peft: files saved by one load in the other and give the
same latents/images (<= 2e-3), in Diffusers', PEFT's and kohya's layouts; fusing, unfusing, mixing two adapters
and the per-call scale agree; text-encoder LoRA too.

The sources are peft adapters added to Diffusers' own tiny SD UNet / CLIP text encoder (randomised up weights, so
the LoRA changes the images). transformers' adapter API needs a newer peft than some environments have, so on the
Diffusers side the text encoder's LoRA is injected with peft directly (what ``load_adapter`` does inside).
"""

import numpy as np
import pytest
import torch

import torchdiffusion as td

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from diffusers.utils import convert_state_dict_to_diffusers  # noqa: E402
from peft.utils import get_peft_model_state_dict  # noqa: E402

TOL = 2e-3
ATTN = ["to_k", "to_q", "to_v", "to_out.0"]
WIDE = ATTN + ["proj_in", "proj_out", "ff.net.2", "conv1", "conv2", "time_emb_proj"]  # convs too (kohya LoCon)
TEXT = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


def _pair(folder):
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    ours = td.StableDiffusionPipeline.from_pretrained(folder)
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    return theirs, ours


def _run(pipe, output_type="latent", **kwargs):
    out = pipe("the cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type=output_type,
               **kwargs).images
    return np.asarray(out.float() if torch.is_tensor(out) else out)


def _assert_same(a, b, tol=TOL):
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _peft_unet_lora(folder, targets=ATTN, r=4, alpha=4, seed=0):
    """A trained-looking peft adapter on Diffusers' UNet -> (PEFT-layout state dict, LoraConfig)."""
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    config = peft.LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
    unet.add_adapter(config)
    _randomise(unet, seed)
    return get_peft_model_state_dict(unet), config


def _peft_text_lora(text_encoder, seed=1, r=2, alpha=4):
    config = peft.LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=TEXT)
    peft.inject_adapter_in_model(config, text_encoder, adapter_name="default")
    _randomise(text_encoder, seed)
    return get_peft_model_state_dict(text_encoder), config


def _save_diffusers(folder, out, **kwargs):
    diffusers.StableDiffusionPipeline.save_lora_weights(out, **kwargs)
    return str(out)


def test_diffusers_saved_lora_loads_here(tiny_sd_folder, tmp_path):
    state, _ = _peft_unet_lora(tiny_sd_folder)
    path = _save_diffusers(tiny_sd_folder, tmp_path / "l", unet_lora_layers=convert_state_dict_to_diffusers(state))
    theirs, ours = _pair(tiny_sd_folder)
    before = _run(ours)
    theirs.load_lora_weights(path)
    ours.load_lora_weights(path)
    assert ours.get_list_adapters() == theirs.get_list_adapters() == {"unet": ["default_0"]}
    assert ours.get_active_adapters() == theirs.get_active_adapters()
    mine = _run(ours)
    assert np.abs(mine - before).max() > 0.05  # the LoRA matters
    _assert_same(_run(theirs), mine)
    _assert_same(_run(theirs, "np"), _run(ours, "np"))
    for scale in (0.0, 0.6):
        kwargs = {"cross_attention_kwargs": {"scale": scale}}
        _assert_same(_run(theirs, **kwargs), _run(ours, **kwargs))


def test_ours_loads_in_diffusers_with_alpha_metadata(tiny_sd_folder, tmp_path):
    """Our UNet + add_adapter + get_peft_model_state_dict + our converter + our save -> Diffusers reads it."""
    unet = td.UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet")
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=ATTN)
    unet.add_adapter(config)
    _randomise(unet, 3)
    state = td.utils.convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    expected = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in state)
    td.StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=state,
                                                 unet_lora_adapter_metadata=config.to_dict())
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()
    theirs, ours = _pair(tiny_sd_folder)
    theirs.load_lora_weights(str(tmp_path))
    ours.load_lora_weights(str(tmp_path))
    layer = ours.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert layer.scaling["default_0"] == 2.0  # alpha 8 / rank 4 from the header
    _assert_same(_run(theirs), _run(ours))


def test_wide_lora_with_conv_layers_both_ways(tiny_sd_folder, tmp_path):
    """LoRA on convolutions and projections too (our fast conv/projection paths must run the adapters)."""
    state, _ = _peft_unet_lora(tiny_sd_folder, targets=WIDE, r=3, alpha=6, seed=4)
    path = _save_diffusers(tiny_sd_folder, tmp_path / "wide", unet_lora_layers=state)  # PEFT layout as is
    theirs, ours = _pair(tiny_sd_folder)
    theirs.load_lora_weights(path)
    ours.load_lora_weights(path)
    _assert_same(_run(theirs), _run(ours))


def _kohya(state: dict) -> dict:
    """PEFT-layout ``unet.`` / ``text_encoder.`` keys -> kohya's, written here independently of the library."""
    out = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        module, _, part = rest.rpartition(".lora_")
        head = {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component]
        name = head + module.replace(".", "_")
        out[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = value
        out[f"{name}.alpha"] = torch.tensor(2.0)  # rank 4: scale 0.5
    return out


def test_kohya_file_same_images_in_both(tiny_sd_folder, tmp_path):
    from safetensors.torch import save_file

    state, _ = _peft_unet_lora(tiny_sd_folder, targets=ATTN + ["proj_in", "ff.net.2", "conv1"], seed=5)
    kohya = _kohya({f"unet.{k}": v for k, v in state.items()})
    save_file(kohya, tmp_path / "style.safetensors")
    theirs, ours = _pair(tiny_sd_folder)
    theirs.load_lora_weights(str(tmp_path), weight_name="style.safetensors")
    ours.load_lora_weights(str(tmp_path), weight_name="style.safetensors", adapter_name="style")
    layer = ours.unet.down_blocks[0].resnets[0].conv1
    assert layer.scaling["style"] == 0.5
    _assert_same(_run(theirs), _run(ours))
    _assert_same(_run(theirs, "np"), _run(ours, "np"))


def test_fuse_then_unfuse_restores_weights_and_matches_diffusers(tiny_sd_folder, tmp_path):
    state, _ = _peft_unet_lora(tiny_sd_folder, targets=WIDE, seed=6)
    theirs, ours = _pair(tiny_sd_folder)
    _run(ours)  # fills the fast conv paths' weight caches with the base weights
    lora = {f"unet.{k}": v for k, v in state.items()}
    theirs.load_lora_weights(dict(lora))
    ours.load_lora_weights(dict(lora))
    original = {k: v.clone() for k, v in ours.unet.state_dict().items()}
    unfused = _run(ours)
    theirs.fuse_lora(lora_scale=0.7)
    ours.fuse_lora(lora_scale=0.7)
    assert ours.num_fused_loras == theirs.num_fused_loras == 1
    _assert_same(_run(theirs), _run(ours))
    ours.unfuse_lora()
    theirs.unfuse_lora()
    for key, value in ours.unet.state_dict().items():
        assert (value - original[key]).abs().max() <= 1e-6, key
    # Diffusers keeps the fuse scale on the layers; so do we
    _assert_same(_run(theirs), _run(ours))
    assert np.abs(_run(ours) - unfused).max() > 1e-3
    # fuse, unload: the fused weights stay, the LoRA layers go (the fast conv caches must not serve stale weights)
    ours.set_adapters("default_0", 1.0)
    theirs.set_adapters("default_0", 1.0)
    ours.fuse_lora()
    theirs.fuse_lora()
    ours.unload_lora_weights()
    theirs.unload_lora_weights()
    assert ours.get_list_adapters() == {}
    assert all("lora" not in k for k in ours.unet.state_dict())
    _assert_same(_run(theirs), _run(ours))


def test_two_adapters_with_weights_match_diffusers(tiny_sd_folder):
    first, _ = _peft_unet_lora(tiny_sd_folder, seed=7)
    second, _ = _peft_unet_lora(tiny_sd_folder, targets=ATTN + ["proj_out"], r=2, seed=8)
    theirs, ours = _pair(tiny_sd_folder)
    for pipe in (theirs, ours):
        pipe.load_lora_weights({f"unet.{k}": v for k, v in first.items()}, adapter_name="a")
        pipe.load_lora_weights({f"unet.{k}": v for k, v in second.items()}, adapter_name="b")
    assert ours.get_active_adapters() == theirs.get_active_adapters()
    assert ours.get_list_adapters() == theirs.get_list_adapters() == {"unet": ["a", "b"]}
    for names, weights in ((["a", "b"], [0.5, 1.2]), ("a", 0.8), (["b", "a"], [None, -0.4])):
        theirs.set_adapters(names, adapter_weights=weights)
        ours.set_adapters(names, adapter_weights=weights)
        assert ours.get_active_adapters() == theirs.get_active_adapters()
        _assert_same(_run(theirs), _run(ours))
    _assert_same(_run(theirs, cross_attention_kwargs={"scale": 0.5}), _run(ours, cross_attention_kwargs={"scale": 0.5}))
    theirs.disable_lora()
    ours.disable_lora()
    _assert_same(_run(theirs), _run(ours))
    theirs.enable_lora()
    ours.enable_lora()
    theirs.delete_adapters("a")
    ours.delete_adapters("a")
    assert ours.get_list_adapters() == theirs.get_list_adapters() == {"unet": ["b"]}
    _assert_same(_run(theirs), _run(ours))


def test_text_encoder_lora(tiny_sd_folder, tmp_path):
    unet_state, _ = _peft_unet_lora(tiny_sd_folder, seed=9)
    theirs, ours = _pair(tiny_sd_folder)
    from transformers import CLIPTextModel

    source = CLIPTextModel.from_pretrained(tiny_sd_folder, subfolder="text_encoder")
    text_state, text_config = _peft_text_lora(source)
    td.StableDiffusionPipeline.save_lora_weights(
        tmp_path,
        unet_lora_layers=td.utils.convert_state_dict_to_diffusers(unet_state),
        text_encoder_lora_layers=td.utils.convert_state_dict_to_diffusers(text_state),
    )
    # Diffusers' side: its UNet loader, and peft injected into the text encoder (see the module docstring)
    theirs.load_lora_weights({f"unet.{k}": v for k, v in unet_state.items()})
    text_config = peft.LoraConfig(r=2, lora_alpha=2, target_modules=TEXT)  # no alpha in the file: scale 1
    peft.inject_adapter_in_model(text_config, theirs.text_encoder, adapter_name="default_0")
    peft.set_peft_model_state_dict(theirs.text_encoder, text_state, adapter_name="default_0")
    ours.load_lora_weights(str(tmp_path))
    assert ours.get_list_adapters() == {"unet": ["default_0"], "text_encoder": ["default_0"]}
    _assert_same(_run(theirs), _run(ours))
    kwargs = {"cross_attention_kwargs": {"scale": 0.3}}  # scales the text encoder's LoRA during encode_prompt
    _assert_same(_run(theirs, **kwargs), _run(ours, **kwargs))
    embeds = ours.encode_prompt("the cat", "cpu", 1, False)[0]
    with torch.no_grad():
        peft_embeds = theirs.encode_prompt("the cat", "cpu", 1, False)[0]
    assert (embeds - peft_embeds).abs().max() <= 1e-5
    ours.set_adapters("default_0", adapter_weights={"unet": 1.0, "text_encoder": 0.5})
    theirs.unet.set_adapters("default_0", 1.0)
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    set_adapters_for_text_encoder("default_0", theirs.text_encoder, 0.5)
    _assert_same(_run(theirs), _run(ours))


def test_old_attention_processor_layout(tiny_sd_folder):
    """Diffusers' oldest UNet LoRA keys (``attn1.processor.to_q_lora.down.weight``, ``to_out_lora``)."""
    state, _ = _peft_unet_lora(tiny_sd_folder, seed=10)
    old = {}
    for key, value in state.items():
        module, _, part = key.rpartition(".lora_")
        head, _, proj = module.rpartition(".")
        head, proj = (head.rpartition(".")[0], "to_out") if proj == "0" else (head, proj)
        old[f"unet.{head}.processor.{proj}_lora.{'down' if part.startswith('A') else 'up'}.weight"] = value
    assert any(".processor.to_out_lora.up.weight" in k for k in old)
    theirs, ours = _pair(tiny_sd_folder)
    theirs.load_lora_weights(dict(old))
    ours.load_lora_weights(dict(old))
    _assert_same(_run(theirs), _run(ours))
    reference = _pair(tiny_sd_folder)[1]
    reference.load_lora_weights({f"unet.{k}": v for k, v in state.items()})
    _assert_same(_run(reference), _run(ours), 1e-6)
