"""Key and config conversion for original (CompVis / Stability "LDM") Stable Diffusion 1.x / 2.x checkpoints.

Key layout of such a file: ``model.diffusion_model.*`` (UNet: ``input_blocks`` / ``middle_block`` /
``output_blocks``), ``first_stage_model.*`` (VAE: ``encoder.down.i.block.j`` ...), ``cond_stage_model.transformer.*``
(SD 1.x: a transformers CLIP text model) or ``cond_stage_model.model.*`` (SD 2.x: OpenCLIP, fused q/k/v; SD 2 uses
its penultimate layer, so the last block is dropped). EMA copies (``model_ema.*``) are ignored.

Configurations come from a local folder in Diffusers' layout (``config=``: a pipeline folder or a model folder; no
weights needed) or are inferred from tensor shapes. Shapes do not tell the number of attention heads or the group
norm size: the inference uses SD's rules (8 heads for conv-projection UNets, 64-channel heads otherwise; 32
groups); pass ``config=`` or overrides (``attention_head_dim=...``, ``norm_num_groups=...``) for other models.
"""

from __future__ import annotations

import re
from typing import Any

import torch

UNET_PREFIX, CLIP_PREFIX, OPENCLIP_PREFIX = (
    "model.diffusion_model.",
    "cond_stage_model.transformer.",
    "cond_stage_model.model.",
)
VAE_PREFIXES = ("first_stage_model.", "vae.")
SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    prediction_type="epsilon",
)
_UNET_TOP = {
    "time_embed.0.": "time_embedding.linear_1.",
    "time_embed.2.": "time_embedding.linear_2.",
    "input_blocks.0.0.": "conv_in.",
    "out.0.": "conv_norm_out.",
    "out.2.": "conv_out.",
}
_UNET_RESNET = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "emb_layers.1.": "time_emb_proj.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
    "skip_connection.": "conv_shortcut.",
}
_VAE_ATTN = {"norm.": "group_norm.", "q.": "to_q.", "k.": "to_k.", "v.": "to_v.", "proj_out.": "to_out.0."}


def _strip(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _part(state: dict, what: str) -> dict[str, torch.Tensor]:
    """The UNet's or VAE's tensors, prefix removed (a file holding only that model may have no prefix)."""
    prefixes = (UNET_PREFIX,) if what == "unet" else VAE_PREFIXES
    for prefix in prefixes:
        part = _strip(state, prefix)
        if part:
            return part
    marker = "input_blocks.0.0.weight" if what == "unet" else "encoder.conv_in.weight"
    if marker in state:
        return dict(state)
    raise ValueError(f"the checkpoint holds no {what} weights (no keys starting with {' or '.join(prefixes)})")


# ---- UNet --------------------------------------------------------------------------------------------------


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def unet_config_from_checkpoint(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A ``UNet2DConditionModel`` config read off the shapes of an LDM UNet state dict (prefix removed)."""
    levels: list[list[tuple[int, int]]] = [[]]
    for i in range(1, _count(sd, r"input_blocks\.(\d+)\.")):
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
            continue
        depth = _count(sd, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")
        levels[-1].append((sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0], depth))
    layers = len(levels[0])
    if any(len(level) != layers for level in levels):
        raise ValueError("the UNet checkpoint has different numbers of resnets per level, which is not supported")
    channels = [level[0][0] for level in levels]
    depths = [level[0][1] for level in levels]
    up_attn = [
        any(
            k.startswith(f"output_blocks.{b * (layers + 1) + j}.1.transformer_blocks.")
            for k in sd
            for j in range(layers + 1)
        )
        for b in range(len(levels))
    ]
    cross = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    linear = any(k.endswith("proj_in.weight") and v.ndim == 2 for k, v in sd.items())
    config: dict[str, Any] = dict(
        sample_size=64,
        in_channels=sd["input_blocks.0.0.weight"].shape[1],
        out_channels=sd["out.2.weight"].shape[0],
        layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        cross_attention_dim=cross,
        attention_head_dim=[max(c // 64, 1) for c in channels] if linear else 8,
        use_linear_projection=linear,
        transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else [max(d, 1) for d in depths],
    )
    if "label_emb.0.0.weight" in sd:
        config["projection_class_embeddings_input_dim"] = sd["label_emb.0.0.weight"].shape[1]
        if cross in (1280, 2048):  # SDXL base / refiner: text and size conditioning
            config.update(addition_embed_type="text_time", addition_time_embed_dim=256, sample_size=128)
        else:
            config["class_embed_type"] = "projection"
    elif "label_emb.weight" in sd:
        config["num_class_embeds"] = sd["label_emb.weight"].shape[0]
    if cross == 1024:  # SD 2.x (OpenCLIP-H); the 768 px v-prediction models need fp32 attention scores
        config["upcast_attention"] = True
        if config["in_channels"] == 4:
            config["sample_size"] = 96
    return config


def convert_unet_state_dict(sd: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """LDM UNet keys -> Diffusers ``UNet2DConditionModel`` keys (``ValueError`` naming unknown keys)."""
    per_level = config["layers_per_block"] + 1
    label = "add_embedding" if config.get("addition_embed_type") == "text_time" else "class_embedding"
    out, unknown = {}, []
    for key, value in sd.items():
        new = _unet_key(key, per_level, label)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f"unknown UNet keys in the checkpoint: {unknown[:8]}")
    return out


def _resnet_key(rest: str) -> str | None:
    for old, new in _UNET_RESNET.items():
        if rest.startswith(old):
            return new + rest[len(old) :]
    return None


def _unet_key(key: str, per_level: int, label: str) -> str | None:
    for old, new in _UNET_TOP.items():
        if key.startswith(old):
            return new + key[len(old) :]
    if key.startswith("label_emb."):
        m = re.match(r"label_emb\.0\.([02])\.(.*)", key)
        if m:
            return f"{label}.linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}"
        return "class_embedding." + key[len("label_emb.") :]
    m = re.match(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.*)", key)
    if not m:
        return None
    kind, i, j, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if kind == "middle_block":
        rest = f"{j}.{rest}" if j is not None else rest
        return (
            f"mid_block.attentions.0.{rest}" if i == 1 else _prefixed(f"mid_block.resnets.{i // 2}.", _resnet_key(rest))
        )
    if j is None:
        return None
    j = int(j)
    if kind == "input_blocks":
        block, layer = (i - 1) // per_level, (i - 1) % per_level
        if j == 0 and rest.startswith("op."):
            return f"down_blocks.{block}.downsamplers.0.conv.{rest[3:]}"
        if j == 0:
            return _prefixed(f"down_blocks.{block}.resnets.{layer}.", _resnet_key(rest))
        return f"down_blocks.{block}.attentions.{layer}.{rest}" if j == 1 else None
    block, layer = i // per_level, i % per_level
    if j == 0:
        return _prefixed(f"up_blocks.{block}.resnets.{layer}.", _resnet_key(rest))
    if rest.startswith("conv."):
        return f"up_blocks.{block}.upsamplers.0.{rest}"
    return f"up_blocks.{block}.attentions.{layer}.{rest}" if j == 1 else None


def _prefixed(prefix: str, rest: str | None) -> str | None:
    return None if rest is None else prefix + rest


# ---- VAE ---------------------------------------------------------------------------------------------------


def vae_config_from_checkpoint(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """An ``AutoencoderKL`` config read off the shapes of an LDM VAE state dict (prefix removed)."""
    levels = _count(sd, r"encoder\.down\.(\d+)\.")
    channels = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] for i in range(levels)]
    config: dict[str, Any] = dict(
        in_channels=sd["encoder.conv_in.weight"].shape[1],
        out_channels=sd["decoder.conv_out.weight"].shape[0],
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=channels,
        latent_channels=sd["decoder.conv_in.weight"].shape[1],
        layers_per_block=_count(sd, r"encoder\.down\.0\.block\.(\d+)\."),
        sample_size=512,
        scaling_factor=0.18215,
    )
    if "quant_conv.weight" not in sd:
        config["use_quant_conv"] = False
    if "post_quant_conv.weight" not in sd:
        config["use_post_quant_conv"] = False
    return config


def convert_vae_state_dict(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """LDM VAE keys -> Diffusers ``AutoencoderKL`` keys; 1x1-conv attention weights become linear ones."""
    out, unknown = {}, []
    for key, value in sd.items():
        new = _vae_key(key, levels)
        if new is None:
            unknown.append(key)
            continue
        if ".attentions." in new and value.ndim > 2:
            value = value.reshape(value.shape[0], value.shape[1])
        out[new] = value
    if unknown:
        raise ValueError(f"unknown VAE keys in the checkpoint: {unknown[:8]}")
    return out


def _vae_key(key: str, levels: int) -> str | None:
    m = re.match(r"(encoder|decoder)\.(.*)", key)
    if not m:
        return key if re.match(r"(post_)?quant_conv\.(weight|bias)$", key) else None
    half, rest = m.groups()
    rest = rest.replace("nin_shortcut.", "conv_shortcut.")
    if rest.startswith("norm_out."):
        return f"{half}.conv_norm_out.{rest[len('norm_out.') :]}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return f"{half}.{rest}"
    m = re.match(r"mid\.block_([12])\.(.*)", rest)
    if m:
        return f"{half}.mid_block.resnets.{int(m.group(1)) - 1}.{m.group(2)}"
    m = re.match(r"mid\.attn_1\.(.*)", rest)
    if m:
        for old, new in _VAE_ATTN.items():
            if m.group(1).startswith(old):
                return f"{half}.mid_block.attentions.0.{new}{m.group(1)[len(old) :]}"
        return None
    m = re.match(r"(down|up)\.(\d+)\.(block\.(\d+)|downsample|upsample)\.(.*)", rest)
    if not m:
        return None
    direction, i, what, j, tail = m.groups()
    level = int(i) if direction == "down" else levels - 1 - int(i)  # LDM numbers decoder levels bottom-up
    if j is not None:
        return f"{half}.{direction}_blocks.{level}.resnets.{j}.{tail}"
    return f"{half}.{direction}_blocks.{level}.{direction}samplers.0.{tail}"


# ---- CLIP text encoder -------------------------------------------------------------------------------------


def text_encoder_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """(transformers ``CLIPTextModel`` keys with the ``text_model.`` prefix, "clip" or "openclip")."""
    sd = _strip(state, CLIP_PREFIX)
    if sd:
        sd = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in sd.items()}
        return {k: v for k, v in sd.items() if not k.endswith("position_ids")}, "clip"
    sd = _strip(state, OPENCLIP_PREFIX)
    if not sd:
        raise ValueError(
            f"the checkpoint holds no text encoder (no keys starting with {CLIP_PREFIX} or {OPENCLIP_PREFIX})"
        )
    last = _count(sd, r"transformer\.resblocks\.(\d+)\.") - 1  # SD 2 reads the penultimate layer: drop the last
    renames = {
        "ln_1.": "layer_norm1.",
        "ln_2.": "layer_norm2.",
        "attn.out_proj.": "self_attn.out_proj.",
        "mlp.c_fc.": "mlp.fc1.",
        "mlp.c_proj.": "mlp.fc2.",
    }
    out = {}
    for key, value in sd.items():
        m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", key)
        if m is None:
            top = {
                "token_embedding.weight": "embeddings.token_embedding.weight",
                "positional_embedding": "embeddings.position_embedding.weight",
                "ln_final.weight": "final_layer_norm.weight",
                "ln_final.bias": "final_layer_norm.bias",
            }
            if key in top:
                out["text_model." + top[key]] = value
            continue  # text_projection, logit_scale, attn_mask: not part of the text encoder SD uses
        layer, rest = int(m.group(1)), m.group(2)
        if layer == last:
            continue
        prefix = f"text_model.encoder.layers.{layer}."
        if rest.startswith("attn.in_proj_"):
            suffix = rest[len("attn.in_proj_") :]
            for name, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                out[f"{prefix}self_attn.{name}_proj.{suffix}"] = chunk.clone()
            continue
        for old, new in renames.items():
            if rest.startswith(old):
                out[prefix + new + rest[len(old) :]] = value
                break
        else:
            raise ValueError(f"unknown OpenCLIP key in the checkpoint: {OPENCLIP_PREFIX}{key}")
    return out, "openclip"


def text_encoder_config(sd: dict[str, torch.Tensor], kind: str) -> dict[str, Any]:
    """A ``CLIPTextConfig`` (as a dict) from the shapes (heads: hidden size / 64, as in CLIP-L and OpenCLIP-H)."""
    vocab, hidden = sd["text_model.embeddings.token_embedding.weight"].shape
    return dict(
        vocab_size=vocab,
        hidden_size=hidden,
        num_attention_heads=max(hidden // 64, 1),
        intermediate_size=sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=_count(sd, r"text_model\.encoder\.layers\.(\d+)\."),
        max_position_embeddings=sd["text_model.embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu" if kind == "clip" else "gelu",
        projection_dim=768 if kind == "clip" else 512,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=1 if kind == "clip" else 0,
    )


def build_text_encoder(state: dict, config_dir: str | None = None, torch_dtype=None):
    """A transformers ``CLIPTextModel`` holding the checkpoint's text encoder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    sd, kind = text_encoder_state_dict(state)
    if config_dir is not None:
        config = CLIPTextConfig.from_pretrained(config_dir, local_files_only=True)
    else:
        config = CLIPTextConfig(**text_encoder_config(sd, kind))
    model = CLIPTextModel(config)
    if not hasattr(model, "text_model"):  # transformers >= 5.6 flattened CLIPTextModel
        sd = {k[len("text_model.") :]: v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"text encoder weights do not fit: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model.to(torch_dtype).eval() if torch_dtype is not None else model.eval()
