"""Tiny random Stable Diffusion parts in the real SD layout, shared by the SD tests.

Everything is built in code: a CLIP byte-level BPE vocabulary written by the test (no downloads), a
transformers ``CLIPTextModel``, and a 4-level ``UNet2DConditionModel`` / ``AutoencoderKL`` built either with
the real ``diffusers`` (the parity oracle) or with ``torchdiffusion`` (same constructor arguments).

``save_tiny_sd(folder)`` writes a pipeline folder with Diffusers' own ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import Any

import torch

MODEL_MAX_LENGTH = 77
CROSS_DIM = 32

# The layout of SD 1.x (4 UNet levels, the last without attention; a 4-level VAE: scale factor 8), narrowed.
UNET_KWARGS: dict[str, Any] = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(8, 16, 16, 16),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=CROSS_DIM,
    attention_head_dim=2,
    norm_num_groups=4,
)
VAE_KWARGS: dict[str, Any] = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 8, 16, 16),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=4,
)
SCHEDULER_KWARGS: dict[str, Any] = dict(  # SD's PNDM scheduler config
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def _byte_chars() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    table = {b: b for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = next(extra)
    return [chr(table[b]) for b in range(256)]


MERGES = ["t h", "th e</w>", "c a", "ca t</w>", "d o", "do g</w>", "a n", "p h", "o t", "ph ot", "phot o</w>"]


def write_clip_tokenizer(
    folder: str | os.PathLike, model_max_length: int = MODEL_MAX_LENGTH, pad_token: str | None = None
):
    """Write vocab.json + merges.txt + tokenizer_config.json of a tiny CLIP tokenizer; return the vocab size."""
    os.makedirs(folder, exist_ok=True)
    chars = _byte_chars()
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    config = {"model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer"}
    if pad_token is not None:
        config["pad_token"] = pad_token
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    return len(vocab)


def tiny_tokenizer(folder: str | os.PathLike, **kwargs: Any):
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder, **kwargs)
    return CLIPTokenizer.from_pretrained(os.fspath(folder))


def tiny_text_encoder(tokenizer, seed: int = 0, with_projection: bool = False, **overrides: Any):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = dict(
        vocab_size=len(tokenizer),
        hidden_size=CROSS_DIM,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=MODEL_MAX_LENGTH,
        projection_dim=CROSS_DIM,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
    )
    config.update(overrides)
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**config)).eval()


def tiny_unet(lib: ModuleType, seed: int = 0, **overrides: Any):
    torch.manual_seed(seed)
    return lib.UNet2DConditionModel(**{**UNET_KWARGS, **overrides}).eval()


def tiny_vae(lib: ModuleType, seed: int = 0, **overrides: Any):
    torch.manual_seed(seed)
    return lib.AutoencoderKL(**{**VAE_KWARGS, **overrides}).eval()


def tiny_sd_components(lib: ModuleType, tokenizer_dir: str | os.PathLike, seed: int = 0, unet_in_channels: int = 4):
    """The components of a tiny SD pipeline built with ``lib`` (``diffusers`` or ``torchdiffusion``)."""
    tokenizer = tiny_tokenizer(tokenizer_dir)
    return dict(
        vae=tiny_vae(lib, seed + 1),
        text_encoder=tiny_text_encoder(tokenizer, seed + 2),
        tokenizer=tokenizer,
        unet=tiny_unet(lib, seed + 3, in_channels=unet_in_channels),
        scheduler=lib.PNDMScheduler(**SCHEDULER_KWARGS),
        safety_checker=None,
        feature_extractor=None,
    )


def save_tiny_sd(folder: str | os.PathLike, seed: int = 0, inpaint: bool = False) -> str:
    """Build a tiny SD (or 9-channel inpainting) pipeline with the real diffusers, every parameter perturbed
    (``tests.helpers.perturb_``), and ``save_pretrained`` it."""
    import diffusers

    from tests.helpers import perturb_

    parts = tiny_sd_components(diffusers, os.path.join(os.fspath(folder) + "_tok"), seed, 9 if inpaint else 4)
    for i, name in enumerate(("unet", "vae", "text_encoder")):  # no default-init norms (1) or biases (0) left
        perturb_(parts[name], seed=seed + 10 + i)
    cls = diffusers.StableDiffusionInpaintPipeline if inpaint else diffusers.StableDiffusionPipeline
    pipe = cls(**parts, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return os.fspath(folder)


# ---- the safety checker of SD 1.x folders, narrowed -----------------------------------------------------------

CHECKER_IMAGE_SIZE = 32
CLIP_CONFIG_KWARGS: dict[str, Any] = dict(
    text_config=dict(hidden_size=16, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=99),
    vision_config=dict(
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=CHECKER_IMAGE_SIZE,
        patch_size=4,
    ),
    projection_dim=16,
)


def tiny_diffusers_safety_checker(seed: int = 0, threshold: float = 0.5):
    """Diffusers' ``StableDiffusionSafetyChecker`` on a tiny random ``CLIPConfig``: random concept embeddings,
    every threshold ``threshold``."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    torch.manual_seed(seed)
    checker = StableDiffusionSafetyChecker(CLIPConfig(**CLIP_CONFIG_KWARGS)).eval()
    with torch.no_grad():
        for p in (checker.concept_embeds, checker.special_care_embeds):
            p.copy_(torch.randn_like(p))
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    return checker


def tiny_feature_extractor():
    """A ``CLIPImageProcessor`` that resizes and crops to the tiny checker's 32 x 32 input."""
    from transformers import CLIPImageProcessor

    size = CHECKER_IMAGE_SIZE
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def checker_embeds(checker, feature_extractor, images) -> torch.Tensor:
    """The checker's CLIP image embeddings (batch, projection_dim) of PIL images, as the pipelines compute them."""
    pixels = feature_extractor(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        return checker.visual_projection(checker.vision_model(pixels).pooler_output)


def save_tiny_sd_with_checker(folder: str | os.PathLike, flag_prompt: str = "the cat", steps: int = 3) -> str:
    """A tiny SD folder with ``safety_checker`` + ``feature_extractor``, saved by Diffusers. The checker's first
    concept is the embedding of the image Diffusers makes for ``flag_prompt`` (seed 0, ``steps`` steps, no
    negative prompt) with threshold 0.999, so exactly that image is flagged; other thresholds are 1 (never)."""
    import diffusers

    parts = tiny_sd_components(diffusers, os.path.join(os.fspath(folder) + "_tok"))
    pipe = diffusers.StableDiffusionPipeline(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(flag_prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).images
    checker = tiny_diffusers_safety_checker(threshold=1.0)
    extractor = tiny_feature_extractor()
    with torch.no_grad():
        checker.concept_embeds[0] = checker_embeds(checker, extractor, image)[0]
        checker.concept_embeds_weights[0] = 0.999
    parts.update(safety_checker=checker, feature_extractor=extractor)
    diffusers.StableDiffusionPipeline(**parts).save_pretrained(folder)
    return os.fspath(folder)


# ---- original (LDM) checkpoint layout, written independently of torchdiffusion.single_file ------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_to_ldm(state: dict, layers_per_block: int) -> dict:
    """Diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` keys of an original SD checkpoint."""
    import re

    n = layers_per_block + 1
    has_attn = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        top = {
            "conv_in": "input_blocks.0.0",
            "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2",
            "conv_norm_out": "out.0",
            "conv_out": "out.2",
            "add_embedding.linear_1": "label_emb.0.0",
            "add_embedding.linear_2": "label_emb.0.2",
            "class_embedding.linear_1": "label_emb.0.0",
            "class_embedding.linear_2": "label_emb.0.2",
        }
        head = ".".join(parts[:-1])
        if head in top:
            new = f"{top[head]}.{parts[-1]}"
        elif m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            if kind == "resnets":
                name, _, tail = rest.partition(".")
                new = f"input_blocks.{1 + b * n + i}.0.{_RESNET_TO_LDM[name]}.{tail}"
            else:
                new = f"input_blocks.{1 + b * n + i}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            new = f"input_blocks.{1 + int(m[1]) * n + layers_per_block}.0.op.{m[2]}"
        elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
            if m[1] == "attentions":
                new = f"middle_block.1.{m[3]}"
            else:
                name, _, tail = m[3].partition(".")
                new = f"middle_block.{2 * int(m[2])}.{_RESNET_TO_LDM[name]}.{tail}"
        elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
            b, kind, i, rest = int(m[1]), m[2], int(m[3]), m[4]
            if kind == "resnets":
                name, _, tail = rest.partition(".")
                new = f"output_blocks.{b * n + i}.0.{_RESNET_TO_LDM[name]}.{tail}"
            else:
                new = f"output_blocks.{b * n + i}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b = int(m[1])
            new = f"output_blocks.{b * n + layers_per_block}.{2 if b in has_attn else 1}.conv.{m[2]}"
        else:
            raise KeyError(key)
        out["model.diffusion_model." + new] = value
    return out


def vae_to_ldm(state: dict) -> dict:
    """Diffusers AutoencoderKL keys -> ``first_stage_model.*`` keys (attention weights as 1x1 convs)."""
    import re

    levels = len({k.split(".")[2] for k in state if k.startswith("encoder.down_blocks.")})
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in state.items():
        new = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(.*)", new):
            new = f"encoder.down.{m[1]}.block.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", new):
            new = f"encoder.down.{m[1]}.downsample.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(.*)", new):
            new = f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", new):
            new = f"decoder.up.{levels - 1 - int(m[1])}.upsample.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.*)", new):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", new):
            new = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            if m[3] == "weight" and m[2] != "group_norm":
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def clip_to_ldm(state: dict) -> dict:
    """transformers CLIPTextModel keys -> SD 1.x ``cond_stage_model.transformer.text_model.*`` keys."""
    return {
        "cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state.items()
    }


def clip_to_openclip(state: dict, seed: int = 0) -> dict:
    """transformers CLIPTextModel keys -> SD 2.x ``cond_stage_model.model.*`` OpenCLIP keys, plus one extra last
    block (SD 2 reads the penultimate layer) and the unused text projection."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layers.")})
    hidden = state["embeddings.token_embedding.weight"].shape[1]
    p = "cond_stage_model.model."
    out = {
        p + "token_embedding.weight": state["embeddings.token_embedding.weight"],
        p + "positional_embedding": state["embeddings.position_embedding.weight"],
        p + "ln_final.weight": state["final_layer_norm.weight"],
        p + "ln_final.bias": state["final_layer_norm.bias"],
        p + "text_projection": torch.randn(hidden, hidden),
        p + "logit_scale": torch.tensor(4.6),
    }
    g = torch.Generator().manual_seed(seed)
    for i in range(layers + 1):

        def get(name, shape, i=i):
            key = f"encoder.layers.{i}.{name}"
            return state[key] if i < layers else torch.randn(shape, generator=g)

        b = f"{p}transformer.resblocks.{i}."
        inter = state["encoder.layers.0.mlp.fc1.weight"].shape[0]
        for t in ("weight", "bias"):
            shape = (hidden, hidden) if t == "weight" else (hidden,)
            out[b + f"attn.in_proj_{t}"] = torch.cat([get(f"self_attn.{x}_proj.{t}", shape) for x in "qkv"])
            out[b + f"attn.out_proj.{t}"] = get(f"self_attn.out_proj.{t}", shape)
            out[b + f"ln_1.{t}"] = get(f"layer_norm1.{t}", (hidden,))
            out[b + f"ln_2.{t}"] = get(f"layer_norm2.{t}", (hidden,))
            out[b + f"mlp.c_fc.{t}"] = get(f"mlp.fc1.{t}", (inter, hidden) if t == "weight" else (inter,))
            out[b + f"mlp.c_proj.{t}"] = get(f"mlp.fc2.{t}", (hidden, inter) if t == "weight" else (hidden,))
    return out


def pipeline_to_ldm(pipe, openclip: bool = False) -> dict:
    """One original-layout checkpoint dict holding a pipeline's UNet, VAE and text encoder (+ LDM extras)."""
    state = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config.layers_per_block)
    state.update(vae_to_ldm(pipe.vae.state_dict()))
    te = pipe.text_encoder.state_dict()
    state.update(clip_to_openclip(te) if openclip else clip_to_ldm(te))
    state["alphas_cumprod"] = torch.linspace(1, 0, 1000)  # LDM extras a loader must skip
    state["model_ema.decay"] = torch.tensor(0.9999)
    return {k: v.contiguous() for k, v in state.items()}
