"""UNet2DModel parity with the real diffusers package: the same seed gives the same initial weights (bit for bit,
same parameter order), a Diffusers state dict loads here with strict=True (and ours loads there), and the forward
outputs agree to 1e-4 on the same weights. Configs follow the tutorials (4-level butterflies, 3-level MNIST) at
tiny widths, plus class-conditional, scale-shift, Fourier + skip blocks, score-SDE (NCSN++, norm_num_groups=None),
resnet resampling, head sizes and the other options."""

from __future__ import annotations

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import torchdiffusion as td  # noqa: E402
from tests.helpers import perturb_  # noqa: E402

BUTTERFLIES = dict(  # the butterflies tutorial: (64, 128, 128, 256) at 32 px, here 1/4 wide
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(16, 32, 32, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
)  # fmt: skip
MNIST = dict(  # the MNIST tutorial: (32, 64, 64) at 28 px, 1 channel, here 1/2 wide
    sample_size=28, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=(16, 32, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
)  # fmt: skip
SMALL = dict(
    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip
SKIP = dict(block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=8, attention_head_dim=None,
            down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
            up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"))  # fmt: skip
NCSNPP = dict(  # score-SDE NCSN++ (google/ncsnpp-*) narrowed: GroupNorm groups min(C // 4, 32) everywhere
    sample_size=16, block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=None, norm_eps=1e-6,
    time_embedding_type="fourier", flip_sin_to_cos=True, freq_shift=1, mid_block_scale_factor=math.sqrt(2.0),
    attention_head_dim=None,
    down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D", "SkipDownBlock2D"),
    up_block_types=("SkipUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"),
)  # fmt: skip

CONFIGS = {
    "butterflies": BUTTERFLIES,
    "mnist": MNIST,
    "class_table": dict(SMALL, num_class_embeds=10),
    "class_timestep": dict(SMALL, class_embed_type="timestep"),
    "class_identity": dict(SMALL, class_embed_type="identity"),
    "scale_shift": dict(SMALL, resnet_time_scale_shift="scale_shift", attention_head_dim=4),
    "scale_shift_attn_groups": dict(SMALL, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4),
    "fourier_skip": dict(SKIP, time_embedding_type="fourier", mid_block_scale_factor=2**0.5),
    "positional_skip": dict(SKIP, flip_sin_to_cos=False, freq_shift=1, resnet_time_scale_shift="scale_shift"),
    "resnet_resampling": dict(SMALL, downsample_type="resnet", upsample_type="resnet", attention_head_dim=16,
                              down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D")),
    "heads_none_no_mid_attn": dict(SMALL, attention_head_dim=None, add_attention=False, act_fn="mish"),
    "no_mid": dict(SMALL, mid_block_type=None, center_input_sample=True, downsample_padding=0),
    "learned_time": dict(SMALL, time_embedding_type="learned", num_train_timesteps=1000, time_embedding_dim=48),
    "legacy_prefix": dict(SMALL, down_block_types=("UNetResDownBlock2D", "AttnDownBlock2D")),
    "ncsnpp": NCSNPP,
    "ncsnpp_scale_shift": dict(NCSNPP, resnet_time_scale_shift="scale_shift"),
}  # fmt: skip


def _inputs(cfg: dict, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    size = min(cfg.get("sample_size") or 16, 16)  # small inputs keep the file fast
    x = torch.randn(batch, cfg.get("in_channels", 3), size, size, generator=g)
    if cfg.get("time_embedding_type") == "fourier":
        t = torch.tensor([0.5, 5.0])[:batch]  # output is divided by sigma: keep it O(1)
    else:
        t = torch.tensor([3, 999])[:batch]
    kwargs = {}
    if cfg.get("num_class_embeds"):
        kwargs["class_labels"] = torch.tensor([1, 7])[:batch]
    elif cfg.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = torch.tensor([4, 600])[:batch]
    elif cfg.get("class_embed_type") == "identity":
        kwargs["class_labels"] = torch.randn(batch, 4 * cfg["block_out_channels"][0], generator=g)
    return x, t, kwargs


def assert_same_initial_weights(make_theirs, make_ours, seed: int = 0) -> None:
    """``torch.manual_seed(seed)`` then building gives Diffusers' parameters exactly, in Diffusers' order."""
    torch.manual_seed(seed)
    theirs = make_theirs().state_dict()
    torch.manual_seed(seed)
    ours = make_ours().state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), f"{key} differs"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_same_seed_gives_diffusers_initial_weights(name):
    cfg = CONFIGS[name]
    assert_same_initial_weights(lambda: diffusers.UNet2DModel(**cfg), lambda: td.UNet2DModel(**cfg), seed=3)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_diffusers_weights_load_here_and_back(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DModel(**cfg).eval())
    ours = td.UNet2DModel(**cfg).eval()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, t, kwargs = _inputs(cfg)
    with torch.no_grad():
        expect = theirs(x, t, **kwargs).sample
        got = ours(x, t, **kwargs).sample
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)

    # ours -> theirs: perturb our weights, load them into a fresh Diffusers model
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.01 * torch.randn_like(p))
    back = diffusers.UNet2DModel(**cfg).eval()
    back.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, **kwargs).sample, back(x, t, **kwargs).sample, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("timestep", [5, torch.tensor(5), torch.tensor([5]), torch.tensor([5, 800])])
def test_timestep_forms_match(timestep):
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DModel(**SMALL).eval())
    ours = td.UNet2DModel(**SMALL).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, timestep).sample, theirs(x, timestep).sample, atol=1e-4, rtol=1e-4)


def test_training_gradients_match():
    cfg = dict(SMALL, num_class_embeds=10, resnet_time_scale_shift="scale_shift")
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DModel(**cfg).train())
    ours = td.UNet2DModel(**cfg).train()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x, t, kwargs = _inputs(cfg)
    for model in (theirs, ours):
        model(x, t, **kwargs).sample.square().mean().backward()
    ours_params = dict(ours.named_parameters())
    for name, p in theirs.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours_params[name].grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cfg", [MNIST, NCSNPP], ids=["mnist", "ncsnpp"])
def test_folder_round_trip_both_ways(tmp_path, cfg):
    torch.manual_seed(0)
    theirs = perturb_(diffusers.UNet2DModel(**cfg).eval())
    theirs.save_pretrained(tmp_path / "d")
    ours = td.UNet2DModel.from_pretrained(tmp_path / "d").eval()
    ours.save_pretrained(tmp_path / "o")
    back = diffusers.UNet2DModel.from_pretrained(tmp_path / "o").eval()
    assert ours.config.norm_num_groups == cfg["norm_num_groups"]
    x, t, _ = _inputs(cfg)
    with torch.no_grad():
        ref = theirs(x, t).sample
        torch.testing.assert_close(ours(x, t).sample, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(back(x, t).sample, ref, atol=1e-4, rtol=1e-4)
