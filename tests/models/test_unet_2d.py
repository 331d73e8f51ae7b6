"""UNet2DModel: shapes, argument checks, timestep forms, class labels, gradient checkpointing, legacy keys."""

from __future__ import annotations

import pytest
import torch

from torchdiffusion import UNet2DModel
from torchdiffusion.weights import load_state_into

TINY = dict(
    sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip


def tiny(**overrides) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**{**TINY, **overrides}).eval()


def test_output_shape_layout_and_tuple():
    model = tiny(out_channels=2)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        out = model(x, 10)
        tup = model(x, 10, return_dict=False)
    assert out.sample.shape == (3, 2, 16, 16) and out.sample.is_contiguous()
    assert isinstance(tup, tuple) and torch.equal(tup[0], out.sample) and torch.equal(out[0], out.sample)


def test_timestep_forms_agree():
    model = tiny()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(x, torch.tensor([7, 7])).sample
        for t in (7, 7.0, torch.tensor(7), torch.tensor([7]), torch.tensor([7.0])):
            torch.testing.assert_close(model(x, t).sample, ref, atol=1e-6, rtol=1e-6)
        per_sample = model(x, torch.tensor([7, 300])).sample
        torch.testing.assert_close(per_sample[0], ref[0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(per_sample[1], ref[1])


@pytest.mark.parametrize(
    "timestep, error, match",
    [(torch.tensor([1, 2, 3]), ValueError, "timestep"), (torch.zeros(2, 1), ValueError, "timestep"),
     ("5", TypeError, "timestep"), (None, TypeError, "timestep")],
)  # fmt: skip
def test_bad_timesteps(timestep, error, match):
    with pytest.raises(error, match=match):
        tiny()(torch.randn(2, 3, 16, 16), timestep)


def test_learned_time_embedding_range():
    model = tiny(time_embedding_type="learned", num_train_timesteps=10)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 9).sample, model(x, torch.tensor([9.0])).sample)
    with pytest.raises(ValueError, match="timestep"):
        model(x, 10)


def test_bad_sample():
    model = tiny()
    with pytest.raises(ValueError, match="sample"):
        model(torch.randn(2, 4, 16, 16), 1)
    with pytest.raises(ValueError, match="sample"):
        model(torch.randn(3, 16, 16), 1)


def test_class_conditioning():
    model = tiny(num_class_embeds=4)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        a = model(x, 5, class_labels=torch.tensor([0, 1])).sample
        b = model(x, 5, class_labels=torch.tensor([2, 1])).sample
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1], atol=1e-6)
    with pytest.raises(ValueError, match="class_labels"):
        model(x, 5)
    with pytest.raises(ValueError, match="class_labels"):
        tiny()(x, 5, class_labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="class_labels"):
        model(x, 5, class_labels=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="class_labels"):
        model(x, 5, class_labels=torch.tensor([0.5, 1.0]))
    for kind, labels in (("timestep", torch.tensor([3, 9])), ("identity", torch.randn(2, 64))):
        out = tiny(class_embed_type=kind)(x, 5, class_labels=labels)
        assert out.sample.shape == x.shape


@pytest.mark.parametrize(
    "overrides",
    [dict(time_embedding_type="fourier"), dict(time_embedding_type="learned", num_train_timesteps=50),
     dict(resnet_time_scale_shift="scale_shift"), dict(downsample_type="resnet", upsample_type="resnet"),
     dict(mid_block_type=None), dict(add_attention=False), dict(attention_head_dim=None),
     dict(center_input_sample=True),
     dict(down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
          up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D")),
     dict(down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
          up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), block_out_channels=(32, 32), attention_head_dim=None),
     dict(down_block_types=("SkipDownBlock2D", "SkipDownBlock2D"), up_block_types=("SkipUpBlock2D", "SkipUpBlock2D"),
          block_out_channels=(16, 32), norm_num_groups=None, time_embedding_type="fourier")],
)  # fmt: skip
def test_config_variants_run(overrides):
    model = tiny(**overrides)
    t = torch.tensor([0.5, 2.0]) if overrides.get("time_embedding_type") == "fourier" else torch.tensor([3, 9])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 16, 16), t).sample
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


SKIP_BLOCKS = dict(down_block_types=("SkipDownBlock2D",) * 2, up_block_types=("SkipUpBlock2D",) * 2)


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(up_block_types=("UpBlock2D",)), "up_block_types"),
        (dict(block_out_channels=(16, 32, 64)), "block_out_channels"),
        (dict(down_block_types=("DownBlock2D", "FancyBlock2D")), "down_block_types"),
        (dict(up_block_types=("AttnUpBlock2D", "CrossAttnUpBlock2D")), "up_block_types"),
        (dict(act_fn="tanhh"), "act_fn"),
        (dict(time_embedding_type="rotary"), "time_embedding_type"),
        (dict(time_embedding_type="learned"), "num_train_timesteps"),
        (dict(class_embed_type="projection"), "class_embed_type"),
        (dict(resnet_time_scale_shift="spatial"), "resnet_time_scale_shift"),
        (dict(downsample_type="pool"), "downsample_type"),
        (dict(upsample_type="transpose"), "upsample_type"),
        (dict(norm_num_groups=5), "norm_num_groups"),
        (dict(norm_num_groups=None), "norm_num_groups"),  # min(C // 4, 32) groups are for the Skip blocks only
        (dict(norm_num_groups=None, block_out_channels=(200, 200), **SKIP_BLOCKS), "norm_num_groups"),
        (dict(norm_num_groups=None, block_out_channels=(2, 32), **SKIP_BLOCKS), "norm_num_groups"),
        (dict(attn_norm_num_groups=3), "attn_norm_num_groups"),
        (dict(attention_head_dim=0), "attention_head_dim"),
        (dict(layers_per_block=0), "layers_per_block"),
        (dict(mid_block_type="UNetMidBlock2DCrossAttn"), "mid_block_type"),
        (dict(num_class_embeds=0), "num_class_embeds"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_constructor_args(overrides, name):
    with pytest.raises(ValueError, match=name):
        UNet2DModel(**{**TINY, **overrides})


def test_gradient_checkpointing_same_grads():
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    grads = []
    for checkpointing in (False, True):
        model = tiny(num_class_embeds=3).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        assert model.is_gradient_checkpointing == checkpointing
        model(x, t, class_labels=torch.tensor([0, 2])).sample.square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_training_and_inference_paths_agree():
    model = tiny(resnet_time_scale_shift="scale_shift")
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 500])
    with torch.no_grad():
        fast = model(x, t).sample
    graph = model(x, t).sample  # grad mode: no in-place shortcuts
    torch.testing.assert_close(fast, graph.detach(), atol=1e-5, rtol=1e-4)  # different kernels, same math


def test_legacy_attention_keys_load():
    model = tiny()
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for key, value in model.state_dict().items():
        for new, legacy in renames.items():
            key = key.replace(f".{new}.", f".{legacy}.")
        old[key] = value + 1
    assert any(".proj_attn." in k for k in old)
    fresh = tiny()
    load_state_into(fresh, old, "legacy")
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key] + 1)


def test_config_round_trip():
    model = tiny(num_class_embeds=3)
    again = UNet2DModel.from_config(model.config)
    assert again.state_dict().keys() == model.state_dict().keys()
    assert again.config.num_class_embeds == 3 and again.config.block_out_channels == model.config.block_out_channels
