"""The shared builders of the named UNet blocks (``models/layers/blocks_common.py``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from torchdiffusion.models.layers.attention import Attention
from torchdiffusion.models.layers.blocks_common import (
    ResnetSettings,
    down_widths,
    resamplers,
    resnet_layers,
    spatial_attention_factory,
    up_widths,
)
from torchdiffusion.models.layers.resampling import Downsample2D, Upsample2D
from torchdiffusion.models.layers.resnet import ResnetBlock2D

RS = ResnetSettings(temb_channels=12, eps=1e-6, groups=4, non_linearity="silu")


def test_resnet_settings_are_frozen_and_read_block_arguments():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RS.groups = 8  # type: ignore[misc]
    args = dict(temb_channels=7, resnet_eps=1e-5, resnet_groups=2, dropout=0.1, resnet_time_scale_shift="scale_shift",
                resnet_act_fn="mish", output_scale_factor=2.0, resnet_pre_norm=True, in_channels=3)  # fmt: skip
    rs = ResnetSettings.from_block_args(args, groups=1)
    assert rs == ResnetSettings(7, 1e-5, 1, 0.1, "scale_shift", "mish", 2.0, True, False)
    assert ResnetSettings.from_block_args({}).temb_channels is None  # VAE blocks: no time embedding


def test_build_uses_the_settings_and_extra_arguments():
    block = RS.build(8, 16, groups_out=8, skip_time_act=True)
    assert isinstance(block, ResnetBlock2D) and (block.in_channels, block.out_channels) == (8, 16)
    assert block.norm1.num_groups == 4 and block.norm2.num_groups == 8 and block.skip_time_act
    assert block.time_emb_proj.in_features == 12
    assert RS.build(8, 8, groups=2).norm1.num_groups == 2  # extra arguments override a setting


def test_widths():
    assert down_widths(8, 16, 3) == [8, 16, 16]
    assert down_widths(8, 16, 0) == []
    # up block: resnet i reads the previous output (prev for i=0) plus skip i (in_channels for the last one)
    assert up_widths(4, 24, 16, 3) == [24 + 16, 16 + 16, 16 + 4]


def test_resnet_layers_interleave_resnets_and_attentions():
    made = []

    def attention():
        made.append(len(made))
        return torch.nn.Identity()

    resnets, attentions = resnet_layers([8, 16], 16, RS, attention)
    assert [(r.in_channels, r.out_channels) for r in resnets] == [(8, 16), (16, 16)] and len(attentions) == 2
    resnets, attentions = resnet_layers([8], 16, RS)
    assert len(resnets) == 1 and attentions is None
    # creation order is resnet 0, attention 0, resnet 1, ... (Diffusers' order: same seed, same weights)
    torch.manual_seed(0)
    first = RS.build(8, 16)
    torch.manual_seed(0)
    resnets, _ = resnet_layers([8, 16], 16, RS, spatial_attention_factory(16, 4, RS, 4))
    torch.testing.assert_close(resnets[0].conv1.weight, first.conv1.weight, rtol=0, atol=0)


def test_spatial_attention_factory_heads_groups_and_bad_head_dim():
    attention = spatial_attention_factory(16, 4, RS, 4)()
    assert isinstance(attention, Attention) and attention.heads == 4 and attention.group_norm.num_groups == 4
    assert spatial_attention_factory(16, None, RS, None)().heads == 1  # None: one head over all channels
    assert spatial_attention_factory(16, None, RS, None)().group_norm is None
    state = torch.random.get_rng_state()
    with pytest.raises(ValueError, match="attention_head_dim"):
        spatial_attention_factory(16, 32, RS, 4)
    assert torch.equal(torch.random.get_rng_state(), state)  # the check draws no random numbers


@pytest.mark.parametrize("up", [False, True])
def test_resamplers_kinds(up):
    conv = resamplers("conv", up, 8, padding=0)
    assert len(conv) == 1 and isinstance(conv[0], Upsample2D if up else Downsample2D)
    res = resamplers("resnet", up, 8, dataclasses.replace(RS, skip_time_act=True))
    assert isinstance(res[0], ResnetBlock2D) and (res[0].up, res[0].down) == (up, not up)
    assert res[0].skip_time_act
    assert resamplers(None, up, 8) is None
    with pytest.raises(ValueError, match="resnet"):
        resamplers("resnet", up, 8)
    x = torch.randn(1, 8, 8, 8)
    size = 16 if up else 4
    assert res[0](x, torch.randn(1, 12)).shape[-1] == size


def test_conv_downsampler_keys_and_padding():
    (down,) = resamplers("conv", False, 8, padding=0)
    assert set(down.state_dict()) == {"conv.weight", "conv.bias"}
    assert down.padding == 0 and down.conv.padding == (0, 0)  # the VAE's asymmetric pad happens in forward
    assert down(torch.randn(1, 8, 8, 8)).shape == (1, 8, 4, 4)
