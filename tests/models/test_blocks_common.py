"""The shared builders of the named UNet blocks (``models/layers/blocks_common.py``)."""

from __future__ import annotations

import pytest
import torch

from torchdiffusion.models.layers.attention import Attention
from torchdiffusion.models.layers.blocks_common import attention_stack, resamplers, resnet_stack
from torchdiffusion.models.layers.resampling import Downsample2D, Upsample2D
from torchdiffusion.models.layers.resnet import ResnetBlock2D

R = (1e-6, 4, 0.0, "default", "silu", 1.0)  # eps, groups, dropout, norm, act, scale


def test_resnet_stack_down_widths():
    stack = resnet_stack(8, 16, 12, 3, R)
    assert [(r.in_channels, r.out_channels) for r in stack] == [(8, 16), (16, 16), (16, 16)]
    assert all(r.time_emb_proj.in_features == 12 for r in stack)
    assert len(resnet_stack(8, 16, 12, 0, R)) == 0


def test_resnet_stack_up_widths_add_each_skip():
    # up block: resnet i reads the previous output (prev for i=0) plus skip i (in_channels for the last one)
    stack = resnet_stack(4, 16, None, 3, R, prev_output_channel=24)
    assert [r.in_channels for r in stack] == [24 + 16, 16 + 16, 16 + 4]
    assert all(r.time_emb_proj is None for r in stack)


def test_resnet_stack_passes_extra_arguments_and_pre_norm():
    stack = resnet_stack(8, 8, 12, 2, R + (True,), skip_time_act=True)
    assert all(isinstance(r, ResnetBlock2D) and r.skip_time_act for r in stack)
    x, temb = torch.randn(2, 8, 4, 4), torch.randn(2, 12)
    assert stack[1](stack[0](x, temb), temb).shape == (2, 8, 4, 4)


def test_attention_stack_heads_and_bad_head_dim():
    stack = attention_stack(16, 4, 1e-6, 4, 1.0, 2)
    assert len(stack) == 2 and all(isinstance(a, Attention) and a.heads == 4 for a in stack)
    assert attention_stack(16, None, 1e-6, 4, 1.0, 1)[0].heads == 1  # None: one head over all channels
    with pytest.raises(ValueError, match="attention_head_dim"):
        attention_stack(16, 32, 1e-6, 4, 1.0, 1)


@pytest.mark.parametrize("up", [False, True])
def test_resamplers_kinds(up):
    conv = resamplers("conv", up, 8, padding=0)
    assert len(conv) == 1 and isinstance(conv[0], Upsample2D if up else Downsample2D)
    res = resamplers("resnet", up, 8, 12, R, skip_time_act=True)
    assert isinstance(res[0], ResnetBlock2D) and (res[0].up, res[0].down) == (up, not up)
    assert res[0].skip_time_act
    assert resamplers(None, up, 8) is None
    x = torch.randn(1, 8, 8, 8)
    size = 16 if up else 4
    assert res[0](x, torch.randn(1, 12)).shape[-1] == size


def test_conv_downsampler_keys_and_padding():
    (down,) = resamplers("conv", False, 8, padding=0)
    assert set(down.state_dict()) == {"conv.weight", "conv.bias"}
    assert down.padding == 0 and down.conv.padding == (0, 0)  # the VAE's asymmetric pad happens in forward
    assert down(torch.randn(1, 8, 8, 8)).shape == (1, 8, 4, 4)
