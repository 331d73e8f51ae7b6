"""Unit tests for torchdiffusion.models.layers: shapes, argument checks, slicing/in-place paths equal the plain ones."""

from __future__ import annotations

import math

import pytest
import torch

from torchdiffusion.models.layers.activations import get_activation
from torchdiffusion.models.layers.attention import Attention
from torchdiffusion.models.layers.embeddings import (
    GaussianFourierProjection,
    TimestepEmbedding,
    Timesteps,
    get_timestep_embedding,
)
from torchdiffusion.models.layers.resampling import Downsample2D, FirDownsample2D, FirUpsample2D, Upsample2D
from torchdiffusion.models.layers.resnet import ResnetBlock2D
from torchdiffusion.models.layers.unet_2d_blocks import (
    AttnDownEncoderBlock2D,
    AttnUpDecoderBlock2D,
    DownEncoderBlock2D,
    UNetMidBlock2D,
    UpDecoderBlock2D,
    get_down_block,
    get_up_block,
)


def test_timestep_embedding_formula():
    t = torch.tensor([0.0, 1.0, 10.5])
    emb = get_timestep_embedding(t, 6, flip_sin_to_cos=False, downscale_freq_shift=1)
    freqs = torch.tensor([math.exp(-math.log(10000) * i / 2) for i in range(3)])
    expect = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(emb, expect)
    flipped = get_timestep_embedding(t, 6, flip_sin_to_cos=True, downscale_freq_shift=1)
    torch.testing.assert_close(flipped, torch.cat([expect[:, 3:], expect[:, :3]], dim=1))
    assert get_timestep_embedding(t, 7).shape == (3, 7)
    with pytest.raises(ValueError, match="timesteps"):
        get_timestep_embedding(torch.zeros(2, 2), 4)


def test_timesteps_module_has_no_state_and_matches_function():
    proj = Timesteps(8, flip_sin_to_cos=True, downscale_freq_shift=0, scale=2)
    assert proj.state_dict() == {}
    t = torch.arange(4)
    expect = get_timestep_embedding(t, 8, flip_sin_to_cos=True, downscale_freq_shift=0, scale=2)
    torch.testing.assert_close(proj(t), expect)
    torch.testing.assert_close(proj.half()(t), expect)  # frequencies recomputed in float32 after .half()


def test_fourier_and_mlp_shapes():
    proj = GaussianFourierProjection(embedding_size=5, scale=16)
    assert list(proj.state_dict()) == ["weight"]
    assert proj(torch.tensor([0.5, 2.0])).shape == (2, 10)
    mlp = TimestepEmbedding(10, 12, cond_proj_dim=3)
    assert set(mlp.state_dict()) == {"linear_1.weight", "linear_1.bias", "linear_2.weight", "linear_2.bias",
                                     "cond_proj.weight"}  # fmt: skip
    assert mlp(torch.randn(2, 10), torch.randn(2, 3)).shape == (2, 12)
    with pytest.raises(ValueError, match="cond_proj"):
        TimestepEmbedding(10, 12)(torch.randn(2, 10), torch.randn(2, 3))


def test_get_activation():
    assert isinstance(get_activation("SiLU"), torch.nn.SiLU)
    with pytest.raises(ValueError, match="act_fn"):
        get_activation("tanhh")


@pytest.mark.parametrize("norm", ["default", "scale_shift"])
@pytest.mark.parametrize("updown", [{}, {"up": True}, {"down": True}, {"down": True, "kernel": "fir"},
                                    {"up": True, "kernel": "fir"}, {"up": True, "kernel": "sde_vp"}])  # fmt: skip
def test_resnet_shapes_and_channels_last_equal(norm, updown):
    torch.manual_seed(0)
    block = ResnetBlock2D(in_channels=8, out_channels=16, temb_channels=6, groups=4, time_embedding_norm=norm,
                          output_scale_factor=2.0, **updown).eval()  # fmt: skip
    x, temb = torch.randn(2, 8, 8, 8), torch.randn(2, 6)
    with torch.no_grad():
        out = block(x, temb)
        out_cl = block(x.contiguous(memory_format=torch.channels_last), temb)
    size = 16 if updown.get("up") else 4 if updown.get("down") else 8
    assert out.shape == (2, 16, size, size)
    torch.testing.assert_close(out, out_cl, atol=1e-5, rtol=1e-5)
    out_grad = block(x, temb)  # the graph-recording path (no in-place ops) gives the same values
    torch.testing.assert_close(out, out_grad.detach(), atol=1e-6, rtol=1e-6)


def test_resnet_bad_args():
    with pytest.raises(ValueError, match="time_embedding_norm"):
        ResnetBlock2D(in_channels=8, time_embedding_norm="spatial")
    with pytest.raises(ValueError, match="groups"):
        ResnetBlock2D(in_channels=8, groups=3)
    block = ResnetBlock2D(in_channels=8, temb_channels=4, groups=4, time_embedding_norm="scale_shift")
    with pytest.raises(ValueError, match="temb"):
        block(torch.randn(1, 8, 4, 4), None)


def test_resampling_layers():
    x = torch.randn(2, 4, 8, 8)
    down = Downsample2D(4, use_conv=True, out_channels=6, padding=0, name="op")
    assert down(x).shape == (2, 6, 4, 4) and set(down.state_dict()) == {"conv.weight", "conv.bias"}
    both = Downsample2D(4, use_conv=True)
    assert {"Conv2d_0.weight", "conv.weight"} <= set(both.state_dict())
    assert Downsample2D(4)(x).shape == (2, 4, 4, 4)
    up = Upsample2D(4, use_conv=True)
    assert up(x).shape == (2, 4, 16, 16) and up(x, output_size=(15, 17)).shape == (2, 4, 15, 17)
    assert Upsample2D(4, use_conv_transpose=True)(x).shape == (2, 4, 16, 16)
    assert list(Upsample2D(4, use_conv=True, name="Conv2d_0").state_dict()) == ["Conv2d_0.weight", "Conv2d_0.bias"]
    assert FirDownsample2D(4, use_conv=True)(x).shape == (2, 4, 4, 4)
    assert FirUpsample2D(4, use_conv=True)(x).shape == (2, 4, 16, 16)
    # FIR down of a constant image keeps the constant away from the zero-padded border
    const = FirDownsample2D(1)(torch.ones(1, 1, 8, 8))
    torch.testing.assert_close(const[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="channels"):
        Downsample2D(4, use_conv=True)(torch.randn(1, 3, 8, 8))


def test_attention_spatial_token_and_cross():
    torch.manual_seed(0)
    attn = Attention(8, heads=2, dim_head=4, norm_num_groups=4, residual_connection=True, bias=True).eval()
    x = torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        out = attn(x)
        out_cl = attn(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == x.shape
    torch.testing.assert_close(out, out_cl, atol=1e-6, rtol=1e-6)

    cross = Attention(8, cross_attention_dim=5, heads=2, dim_head=3).eval()
    tokens, ctx = torch.randn(2, 7, 8), torch.randn(2, 3, 5)
    out = cross(tokens, encoder_hidden_states=ctx)
    assert out.shape == (2, 7, 8)
    # reference: plain softmax attention
    q = cross.to_q(tokens).view(2, 7, 2, 3).transpose(1, 2)
    k = cross.to_k(ctx).view(2, 3, 2, 3).transpose(1, 2)
    v = cross.to_v(ctx).view(2, 3, 2, 3).transpose(1, 2)
    w = (q @ k.transpose(-1, -2) / math.sqrt(3)).softmax(-1)
    ref = cross.to_out[0]((w @ v).transpose(1, 2).reshape(2, 7, 6))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_attention_mask_and_slicing():
    torch.manual_seed(0)
    attn = Attention(8, cross_attention_dim=4, heads=4, dim_head=2).eval()
    tokens, ctx = torch.randn(2, 5, 8), torch.randn(2, 3, 4)
    bias = torch.zeros(2, 1, 3)
    bias[0, 0, 2] = -10000.0
    full = attn(tokens, ctx, attention_mask=bias)
    torch.testing.assert_close(attn(tokens[:1], ctx[:1, :2])[0], full[0], atol=1e-5, rtol=1e-5)
    for size in (1, 3, 4):
        attn.set_attention_slice(size)
        torch.testing.assert_close(attn(tokens, ctx, attention_mask=bias), full, atol=1e-6, rtol=1e-6)
    attn.set_attention_slice(None)
    with pytest.raises(ValueError, match="slice_size"):
        attn.set_attention_slice(5)
    with pytest.raises(ValueError, match="attention_mask"):
        attn(tokens, ctx, attention_mask=torch.zeros(2, 1, 4))


def test_attention_bad_args():
    with pytest.raises(ValueError, match="heads"):
        Attention(8, heads=0)
    with pytest.raises(ValueError, match="norm_num_groups"):
        Attention(8, norm_num_groups=3)
    with pytest.raises(ValueError, match="spatial_norm_dim"):
        Attention(8, spatial_norm_dim=4)


def test_vae_blocks_and_mid_block():
    x = torch.randn(1, 8, 8, 8)
    assert DownEncoderBlock2D(8, 16, num_layers=2, resnet_groups=4)(x).shape == (1, 16, 4, 4)
    assert AttnDownEncoderBlock2D(8, 16, resnet_groups=4, attention_head_dim=8)(x).shape == (1, 16, 4, 4)
    assert UpDecoderBlock2D(8, 16, resnet_groups=4)(x).shape == (1, 16, 16, 16)
    assert AttnUpDecoderBlock2D(8, 16, resnet_groups=4, add_upsample=False)(x).shape == (1, 16, 8, 8)
    mid = UNetMidBlock2D(8, temb_channels=None, resnet_groups=4, attention_head_dim=8)
    assert mid(x).shape == x.shape and len(mid.resnets) == 2
    bare = UNetMidBlock2D(8, temb_channels=None, resnet_groups=4, num_layers=0, add_attention=False)
    assert len(bare.resnets) == 1 and bare(x).shape == x.shape


DOWN = ["DownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D", "SkipDownBlock2D", "AttnSkipDownBlock2D",
        "UNetResDownBlock2D"]  # fmt: skip
UP = ["UpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D"]


@pytest.mark.parametrize("kind", DOWN)
def test_down_blocks(kind):
    block = get_down_block(kind, num_layers=2, in_channels=32, out_channels=64, temb_channels=16, add_downsample=True,
                           resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=8, attention_head_dim=16)  # fmt: skip
    x, temb = torch.randn(2, 32, 8, 8), torch.randn(2, 16)
    out = block(x, temb, torch.randn(2, 3, 8, 8)) if "Skip" in kind else block(x, temb)
    assert out[0].shape == (2, 64, 4, 4) and len(out[1]) == 3


@pytest.mark.parametrize("kind", UP)
def test_up_blocks(kind):
    block = get_up_block(kind, num_layers=2, in_channels=32, out_channels=64, prev_output_channel=64, temb_channels=16,
                         add_upsample=True, resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=8,
                         attention_head_dim=16)  # fmt: skip
    x, temb = torch.randn(2, 64, 4, 4), torch.randn(2, 16)
    skips = (torch.randn(2, 32, 4, 4), torch.randn(2, 64, 4, 4))
    out = block(x, skips, temb)
    sample = out[0] if "Skip" in kind else out
    assert sample.shape == (2, 64, 8, 8)


def test_factories_reject_unknown_types():
    common = dict(num_layers=1, in_channels=8, out_channels=8, temb_channels=4, resnet_eps=1e-5, resnet_act_fn="silu")
    with pytest.raises(ValueError, match="down_block_type"):
        get_down_block("KDownBlock2D", add_downsample=True, **common)
    with pytest.raises(ValueError, match="up_block_type"):
        get_up_block("NopeUpBlock2D", prev_output_channel=8, add_upsample=True, **common)
    with pytest.raises(ValueError, match="attention_head_dim"):
        get_down_block("AttnDownBlock2D", add_downsample=True, resnet_groups=4, attention_head_dim=16, **common)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        get_down_block("CrossAttnDownBlock2D", add_downsample=True, resnet_groups=4, **common)


@pytest.mark.parametrize("size", [(4, 4), (8, 8), (9, 12)])
def test_upsample_conv_subpixel_path_equals_plain(size):
    torch.manual_seed(0)
    up = Upsample2D(6, use_conv=True, out_channels=5)
    x = torch.randn(2, 6, *size).contiguous(memory_format=torch.channels_last)
    plain = up.conv(torch.nn.functional.interpolate(x.contiguous(), scale_factor=2.0, mode="nearest"))
    with torch.no_grad():
        fast = up(x)
        again = up(x, output_size=(2 * size[0], 2 * size[1]))
    torch.testing.assert_close(fast, plain.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, fast)
    with torch.no_grad():  # the cached phase kernels follow in-place weight updates
        up.conv.weight.mul_(2)
        up.conv.bias.mul_(2)
        torch.testing.assert_close(up(x), 2 * fast, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size", [(4, 4), (6, 9)])
def test_upsample_conv_subpixel_path_has_plain_gradients(size):
    """Under autograd the sub-pixel path gives the plain path's output and gradients (input, weight, bias)."""
    torch.manual_seed(0)
    up = Upsample2D(6, use_conv=True, out_channels=5)
    x = torch.randn(2, 6, *size).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    x_plain = x.detach().clone().requires_grad_(True)
    fast = up(x)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    plain = up.conv(torch.nn.functional.interpolate(x_plain, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(plain)
    grads_fast = torch.autograd.grad(fast, (x, up.conv.weight, up.conv.bias), upstream)
    grads_plain = torch.autograd.grad(plain, (x_plain, up.conv.weight, up.conv.bias), upstream)
    for got, want in zip(grads_fast, grads_plain):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "in_channels,out_channels,size,batch", [(192, 128, (4, 4), 32), (256, 256, (8, 8), 4), (200, 128, (10, 12), 9)]
)
def test_conv2d_winograd_path_equals_direct(in_channels, out_channels, size, batch, monkeypatch):
    """Wide 3x3 layers take the Winograd F(2x2, 3x3) path in inference; same values, channels-last out, and the
    cached transformed kernels follow in-place weight updates."""
    from torchdiffusion.models.layers import cpu_kernels

    monkeypatch.setattr(cpu_kernels, "WINOGRAD", cpu_kernels.WINOGRAD_RULES["AVX2"])  # the widest rules
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(in_channels, out_channels, 3, padding=1)
    x = torch.randn(batch, in_channels, *size).contiguous(memory_format=torch.channels_last)
    assert cpu_kernels._use_winograd(conv, x)
    with torch.no_grad():
        want = torch.nn.functional.conv2d(x.contiguous(), conv.weight, conv.bias, padding=1)
        got = cpu_kernels.conv2d(conv, x)
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        conv.weight.mul_(-1)
        torch.testing.assert_close(
            cpu_kernels.conv2d(conv, x), 2 * conv.bias.view(1, -1, 1, 1) - want, atol=2e-5, rtol=1e-5
        )
    conv.bias = None
    with torch.no_grad():
        torch.testing.assert_close(
            cpu_kernels.conv2d(conv, x),
            torch.nn.functional.conv2d(x.contiguous(), conv.weight, padding=1),
            atol=2e-5,
            rtol=1e-5,
        )


def test_conv2d_winograd_applies_only_where_it_pays(monkeypatch):
    from torchdiffusion.models.layers import cpu_kernels

    avx512 = cpu_kernels.WINOGRAD_RULES["AVX512"]
    expected = "AVX512" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "AVX2"
    assert cpu_kernels.WINOGRAD is cpu_kernels.WINOGRAD_RULES[expected]  # this CPU's rules
    monkeypatch.setattr(cpu_kernels, "WINOGRAD", cpu_kernels.WINOGRAD_RULES["AVX2"])

    def conv(c_in: int, c_out: int, **kw) -> torch.nn.Conv2d:
        return torch.nn.Conv2d(c_in, c_out, 3, padding=1, **kw)

    def x(batch: int, c: int, h: int, w: int) -> torch.Tensor:
        return torch.empty(batch, c, h, w).contiguous(memory_format=torch.channels_last)

    wide = conv(256, 256)
    assert cpu_kernels._use_winograd(wide, x(2, 256, 16, 16))
    assert cpu_kernels._use_winograd(wide, x(16, 256, 4, 4))  # small map, enough work
    assert cpu_kernels._use_winograd(conv(192, 128), x(16, 192, 16, 16))  # narrow output on a small map
    assert cpu_kernels._use_winograd(conv(320, 320), x(2, 320, 64, 64))  # wide output on a large map
    assert not cpu_kernels._use_winograd(conv(256, 128), x(16, 256, 32, 32))  # narrow output on a large map
    assert not cpu_kernels._use_winograd(conv(512, 512), x(1, 512, 96, 96))  # above 64x64 the transforms dominate
    assert not cpu_kernels._use_winograd(conv(128, 128), x(16, 128, 16, 16))  # narrow input: GEMM too short
    assert not cpu_kernels._use_winograd(conv(4, 320), x(2, 4, 64, 64))  # e.g. a UNet's conv_in
    assert not cpu_kernels._use_winograd(conv(256, 64), x(16, 256, 8, 8))  # narrow output
    assert not cpu_kernels._use_winograd(wide, x(1, 256, 4, 4))  # too little work for ~20 small ops
    assert not cpu_kernels._use_winograd(conv(256, 256, stride=2), x(2, 256, 16, 16))
    assert not cpu_kernels._use_winograd(wide, x(2, 256, 16, 16).contiguous())  # NCHW
    assert not cpu_kernels._use_winograd(wide, x(4, 256, 17, 16))  # odd height
    assert not cpu_kernels._use_winograd(wide, x(64, 256, 2, 2))  # map below the minimum size
    assert not cpu_kernels._use_winograd(wide, x(2, 256, 16, 16).double())
    # AVX-512: only SD's 1280-channel levels (oneDNN's direct kernel is fast up to 640 channels there)
    assert cpu_kernels._use_winograd(conv(1280, 1280), x(2, 1280, 8, 8), avx512)
    assert cpu_kernels._use_winograd(conv(2560, 1280), x(2, 2560, 16, 16), avx512)
    assert not cpu_kernels._use_winograd(conv(640, 640), x(2, 640, 32, 32), avx512)
    assert not cpu_kernels._use_winograd(conv(512, 512), x(1, 512, 32, 32), avx512)  # an SD VAE decoder level
    assert not cpu_kernels._use_winograd(wide, x(2, 256, 16, 16), avx512)
    # under autograd the direct kernel runs (training keeps oneDNN's backward)
    out = cpu_kernels.conv2d(
        wide, torch.randn(2, 256, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_()
    )
    assert out.grad_fn is not None and "Convolution" in type(out.grad_fn).__name__
