"""Layer-level parity with the real diffusers package: same weights, same outputs (<= 1e-5)."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffusers.models import attention_processor as d_attn  # noqa: E402
from diffusers.models import downsampling as d_down  # noqa: E402
from diffusers.models import embeddings as d_emb  # noqa: E402
from diffusers.models import resnet as d_resnet  # noqa: E402
from diffusers.models import upsampling as d_up  # noqa: E402

from tests.helpers import perturb_  # noqa: E402
from torchdiffusion.models.layers import attention, embeddings, resampling, resnet  # noqa: E402


def _pair(ours_cls, theirs_cls, *args, **kwargs):
    torch.manual_seed(0)
    theirs = perturb_(theirs_cls(*args, **kwargs).eval())
    ours = ours_cls(*args, **kwargs).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("shift", [0, 1])
def test_timestep_embedding(flip, shift):
    t = torch.tensor([0, 3, 999])
    for dim in (8, 9):
        ours = embeddings.get_timestep_embedding(t, dim, flip, shift, scale=2.0, max_period=100)
        theirs = d_emb.get_timestep_embedding(t, dim, flip, shift, scale=2.0, max_period=100)
        torch.testing.assert_close(ours, theirs, atol=0, rtol=0)


def test_fourier_projection_and_seeded_init():
    ours, theirs = _pair(embeddings.GaussianFourierProjection, d_emb.GaussianFourierProjection, 6, scale=16)
    torch.manual_seed(0)
    fresh = embeddings.GaussianFourierProjection(6, scale=16)
    torch.manual_seed(0)
    fresh_theirs = d_emb.GaussianFourierProjection(6, scale=16)
    torch.testing.assert_close(fresh.weight, fresh_theirs.weight)  # same draws from the same seed
    x = torch.tensor([0.1, 2.0])
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_embedding_norm": "default"},
        {"time_embedding_norm": "scale_shift", "skip_time_act": True},
        {"up": True},
        {"down": True},
        {"up": True, "kernel": "fir", "use_in_shortcut": True},
        {"down": True, "kernel": "fir"},
        {"down": True, "kernel": "sde_vp", "output_scale_factor": 2.0},
        {"temb_channels": None, "conv_2d_out_channels": 12},
    ],
)
def test_resnet_block(kwargs):
    kwargs = {"in_channels": 8, "out_channels": 16, "temb_channels": 6, "groups": 4, **kwargs}
    ours, theirs = _pair(resnet.ResnetBlock2D, d_resnet.ResnetBlock2D, **kwargs)
    x, temb = torch.randn(2, 8, 8, 8), torch.randn(2, 6)
    temb = temb if kwargs["temb_channels"] else None
    with torch.no_grad():
        torch.testing.assert_close(ours(x, temb), theirs(x, temb), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use_conv", [True, False])
def test_fir_sampling(use_conv):
    x = torch.randn(2, 4, 8, 8)
    for ours_cls, theirs_cls in ((resampling.FirUpsample2D, d_up.FirUpsample2D),
                                 (resampling.FirDownsample2D, d_down.FirDownsample2D)):  # fmt: skip
        ours, theirs = _pair(ours_cls, theirs_cls, 4, out_channels=6 if use_conv else 4, use_conv=use_conv)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_plain_sampling():
    x = torch.randn(2, 4, 7, 9)
    for kw in ({"use_conv": True, "padding": 0, "name": "op"}, {"use_conv": True}, {"use_conv": False}):
        ours, theirs = _pair(resampling.Downsample2D, d_down.Downsample2D, 4, **kw)
        torch.testing.assert_close(ours(x), theirs(x))
    for kw in ({"use_conv": True}, {"use_conv_transpose": True}, {"use_conv": True, "name": "Conv2d_0"}):
        ours, theirs = _pair(resampling.Upsample2D, d_up.Upsample2D, 4, **kw)
        torch.testing.assert_close(ours(x), theirs(x))
        torch.testing.assert_close(ours(x, output_size=(15, 17)), theirs(x, output_size=(15, 17)))


@pytest.mark.parametrize("sliced", [False, True])
def test_attention(sliced):
    spatial = dict(heads=2, dim_head=4, norm_num_groups=4, residual_connection=True, bias=True,
                   rescale_output_factor=2.0, eps=1e-6, upcast_softmax=True)  # fmt: skip
    ours, theirs = _pair(attention.Attention, d_attn.Attention, 8, **spatial)
    x = torch.randn(2, 8, 4, 5)
    if sliced:
        ours.set_attention_slice(1)
        theirs.set_attention_slice(1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)

    cross = dict(cross_attention_dim=6, heads=3, dim_head=4, out_bias=False, cross_attention_norm="layer_norm")
    ours, theirs = _pair(attention.Attention, d_attn.Attention, 8, **cross)
    if sliced:
        ours.set_attention_slice(2)
        theirs.set_attention_slice(2)
    tokens, ctx = torch.randn(2, 10, 8), torch.randn(2, 5, 6)
    mask = torch.zeros(2, 1, 5)
    mask[1, 0, 3:] = -10000.0
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens, ctx), theirs(tokens, ctx), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            ours(tokens, ctx, attention_mask=mask), theirs(tokens, ctx, attention_mask=mask), atol=1e-5, rtol=1e-5
        )
