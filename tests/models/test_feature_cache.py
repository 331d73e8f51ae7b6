"""UNet feature caching (DeepCache idea): full calls are exactly the uncached computation, cached calls run only
the shallow levels on the recorded deep features, and bad arguments name themselves."""

from __future__ import annotations

import pytest
import torch

from tests.sd_fixtures import CROSS_DIM, tiny_unet
from torchdiffusion import UNet2DConditionModel, UNet2DModel
from torchdiffusion.models.feature_cache import UNetFeatureCache

TINY_2D = dict(
    sample_size=16, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip
SKIP_2D = dict(
    sample_size=16, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8,
    down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"), up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
    attention_head_dim=None,
)  # fmt: skip


def _unet2d(**kwargs) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(**kwargs).eval()


def _cond_unet() -> UNet2DConditionModel:
    import torchdiffusion as td

    return tiny_unet(td)


def _calls(model):
    """(model call on (x, t) with an optional cache, batch of inputs)."""
    if isinstance(model, UNet2DConditionModel):
        ctx = torch.randn(2, 5, CROSS_DIM)

        def call(x, t, cache=None):
            return model(x, t, encoder_hidden_states=ctx, feature_cache=cache).sample

        return call, torch.randn(2, 4, 8, 8)

    def call(x, t, cache=None):
        return model(x, t, feature_cache=cache).sample

    return call, torch.randn(2, 3, 16, 16)


def _cond_unet_freeu() -> UNet2DConditionModel:
    unet = _cond_unet()
    unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)  # FreeU scales up-block inputs: the cache keeps copies
    return unet


MODELS = {
    "cond": _cond_unet,
    "cond_freeu": _cond_unet_freeu,
    "unet2d": lambda: _unet2d(**TINY_2D),
    "skip_blocks": lambda: _unet2d(**SKIP_2D),
}


@pytest.mark.parametrize("which", sorted(MODELS))
def test_interval_one_is_bit_identical(which):
    model = MODELS[which]()
    call, x = _calls(model)
    with torch.inference_mode():
        for depth in range(1, len(model.down_blocks) + 1):
            cache = UNetFeatureCache(1, depth)
            for t in (900, 500, 100):
                xt = x * t / 1000
                assert torch.equal(call(xt, t, cache), call(xt, t))
            assert cache.full_calls == 3


@pytest.mark.parametrize("which", sorted(MODELS))
def test_every_nth_call_is_full_and_cached_calls_reuse(which):
    model = MODELS[which]()
    call, x = _calls(model)
    deep_calls = []
    last_deep = model.mid_block if model.mid_block is not None else model.up_blocks[0]
    last_deep.register_forward_hook(lambda *a: deep_calls.append(1))
    n = len(model.down_blocks)
    with torch.inference_mode():
        for depth in range(1, n + 1):
            cache = UNetFeatureCache(3, depth)
            deep_calls.clear()
            for i, t in enumerate((900, 800, 700, 600, 500, 400, 300)):
                xt = x * (1 + i / 10)
                out = call(xt, t, cache)
                full = call(xt, t)
                if i % 3 == 0:
                    assert torch.equal(out, full), (depth, i)
                else:
                    assert not torch.equal(out, full), (depth, i)
            assert cache.full_calls == 3
            assert len(deep_calls) == 3 + 7  # deep part: 3 full cached calls + 7 uncached reference calls


@pytest.mark.parametrize("which", sorted(MODELS))
def test_cached_call_on_the_same_input_gives_the_full_output(which):
    """A cached call on exactly the input of the last full call must recompute the same output: the shallow levels
    and the recorded deep features are wired as in the full network."""
    model = MODELS[which]()
    call, x = _calls(model)
    with torch.inference_mode():
        for depth in range(1, len(model.down_blocks) + 1):
            cache = UNetFeatureCache(4, depth)
            first = call(x, 500, cache)
            assert torch.equal(call(x, 500, cache), first)
            assert cache.full_calls == 1


def test_shape_change_runs_in_full_and_keep_last_rows():
    model = _unet2d(**TINY_2D)
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        cache = UNetFeatureCache(10, 1)
        model(x, 5, feature_cache=cache)
        out = model(x[:2], 5, feature_cache=cache).sample  # batch changed: runs in full again
        assert cache.full_calls == 2 and torch.equal(out, model(x[:2], 5).sample)
        cache = UNetFeatureCache(10, 2)
        model(x, 5, feature_cache=cache)
        cache.keep_last_rows(2)  # the conditional half of a guided batch
        kept = model(x[2:], 5, feature_cache=cache).sample  # reuses rows 2..3 (batch 4 -> 2: rounding only)
        torch.testing.assert_close(kept, model(x[2:], 5).sample, atol=1e-5, rtol=0)
        assert cache.full_calls == 1


@pytest.mark.parametrize(
    "args, name",
    [((0, 1), "cache_interval"), ((-2, 1), "cache_interval"), ((2, 0), "cache_depth")],
)
def test_bad_cache_arguments(args, name):
    with pytest.raises(ValueError, match=name):
        UNetFeatureCache(*args)
    with pytest.raises(TypeError, match="cache_interval"):
        UNetFeatureCache(1.5, 1)


def test_cache_depth_deeper_than_the_unet():
    model = _unet2d(**TINY_2D)
    with pytest.raises(ValueError, match="cache_depth"), torch.inference_mode():
        model(torch.randn(1, 3, 16, 16), 3, feature_cache=UNetFeatureCache(2, 4))
