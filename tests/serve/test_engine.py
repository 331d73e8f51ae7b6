"""The engine: one set of weights behind every sampler and mode."""

from __future__ import annotations


def test_variants_share_the_components(engine):
    euler = engine.pipeline("txt2img", "EulerDiscreteScheduler", {})
    assert engine.pipeline("txt2img", "EulerDiscreteScheduler", {}) is euler  # built once
    inpaint = engine.pipeline("inpaint", "DDIMScheduler", {"set_alpha_to_one": True})
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(euler, name) is getattr(inpaint, name) is getattr(engine.pipe, name)
    assert type(euler.scheduler).__name__ == "EulerDiscreteScheduler" and euler.scheduler is not engine.pipe.scheduler
    assert inpaint.scheduler.config.set_alpha_to_one is True
    assert type(engine.pipe.scheduler).__name__ == "PNDMScheduler"  # the folder's own is left alone


def test_preview():
    import torch

    from torchdiffusion.serve.engine import preview

    assert preview(torch.zeros(4, 5, 6)).size == (6, 5)
    assert preview(torch.zeros(3, 5, 6)) is None and preview(None) is None
