"""The per-call speed options of every pipeline: UNet feature caching (``cache_interval`` / ``cache_depth``) and
guidance that stops early (``guidance_end``, and the ``SDCFGCutoffCallback`` form): exactness where promised,
per-call state under threads, and errors naming bad arguments."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

import torchdiffusion as td
from tests.sd_fixtures import tiny_sd_components
from torchdiffusion.callbacks import SDCFGCutoffCallback

pytest.importorskip("transformers")

SD_CLASSES = ["StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_sd_components(td, tmp_path_factory.mktemp("tok"))


def _pipe(parts, cls_name="StableDiffusionPipeline", **overrides):
    p = getattr(td, cls_name)(**{**parts, **overrides}, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def _picture():
    return Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8"))


def _hole():
    m = np.zeros((64, 64), "uint8")
    m[:, 32:] = 255
    return Image.fromarray(m)


def run(pipe, prompt="the cat", seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 6)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    name = type(pipe).__name__
    if name != "StableDiffusionPipeline":
        kwargs.setdefault("image", _picture())
    if name == "StableDiffusionInpaintPipeline":
        kwargs.setdefault("mask_image", _hole())
    return pipe(prompt, **kwargs).images


class _UNetSpy:
    """Records, per UNet call, its batch size and whether the deep part (the mid block) ran."""

    def __init__(self, unet):
        self.batches, self.full = [], []

        def begin(module, args):
            self.batches.append(args[0].shape[0])
            self.full.append(0)

        self._handles = [
            unet.register_forward_pre_hook(begin),
            unet.mid_block.register_forward_hook(lambda *a: self.full.__setitem__(-1, 1)),
        ]

    def remove(self):
        for h in self._handles:
            h.remove()


@pytest.mark.parametrize("cls_name", SD_CLASSES)
def test_cache_interval_one_is_bit_identical(parts, cls_name):
    pipe = _pipe(parts, cls_name)
    off = run(pipe)
    for depth in (1, 2, 4):
        assert np.array_equal(run(pipe, cache_interval=1, cache_depth=depth), off)


@pytest.mark.parametrize("cls_name", SD_CLASSES)
def test_every_nth_step_is_full(parts, cls_name):
    pipe = _pipe(parts, cls_name)
    first = {}

    def keep_first(p, i, t, tensors):
        if i == 0:
            first[len(first)] = tensors["latents"].clone()
        return {}

    spy = _UNetSpy(pipe.unet)
    try:
        off = run(pipe, callback_on_step_end=keep_first)
        spy.full.clear()
        cached = run(pipe, cache_interval=3, cache_depth=2, callback_on_step_end=keep_first)
    finally:
        spy.remove()
    n = pipe.num_timesteps
    assert spy.full == [int(i % 3 == 0) for i in range(n)]  # steps 0, 3, 6, ... run the whole UNet
    assert torch.equal(first[0], first[1])  # step 0 is exactly the full computation
    assert not np.array_equal(cached, off) and np.isfinite(cached).all()


def test_guidance_end_halves_the_batch_and_equals_the_callback_forms(parts):
    import diffusers.callbacks

    pipe = _pipe(parts)
    spy = _UNetSpy(pipe.unet)
    try:
        ours = run(pipe, guidance_end=0.5)
        batches = list(spy.batches)
    finally:
        spy.remove()
    n = pipe.num_timesteps  # PNDM: 6 steps -> 7 timesteps; guided steps 0 .. int(7 * 0.5) = 3
    assert batches == [2] * 4 + [1] * (n - 4)
    assert pipe.guidance_scale == 7.5  # guidance_end does not touch the call's guidance scale
    for callback in (
        SDCFGCutoffCallback(cutoff_step_ratio=0.5),
        diffusers.callbacks.SDCFGCutoffCallback(cutoff_step_ratio=0.5),
    ):
        assert np.array_equal(run(pipe, callback_on_step_end=callback), ours)
    by_index = SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=3)
    assert np.array_equal(run(pipe, callback_on_step_end=by_index), ours)
    assert np.array_equal(run(pipe, guidance_end=1.0), run(pipe))
    assert not np.array_equal(ours, run(pipe))


def test_callback_changes_only_its_own_call(parts):
    pipe = _pipe(parts)
    plain = run(pipe)
    run(pipe, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.2))
    assert np.array_equal(run(pipe), plain)
    assert pipe.guidance_scale == 7.5


def test_guidance_end_for_a_batch_and_the_diffusers_last_row_slice(parts):
    import diffusers.callbacks

    pipe = _pipe(parts)
    prompts = ["the cat", "a dog"]
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    ours = run(pipe, prompts, generator=gens(), guidance_end=0.4)
    ours_cb = run(pipe, prompts, generator=gens(), callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.4))
    np.testing.assert_array_equal(ours_cb, ours)
    # Diffusers' callback keeps only prompt_embeds[-1:]; the call takes back the conditional rows it cut off.
    theirs_cb = diffusers.callbacks.SDCFGCutoffCallback(cutoff_step_ratio=0.4)
    np.testing.assert_array_equal(run(pipe, prompts, generator=gens(), callback_on_step_end=theirs_cb), ours)
    for i in range(2):
        alone = run(pipe, prompts[i], generator=gens()[i], guidance_end=0.4)
        np.testing.assert_allclose(alone[0], ours[i], atol=1e-4)


@pytest.mark.parametrize("cls_name", SD_CLASSES[1:])
def test_guidance_end_and_cache_on_image_pipelines(parts, cls_name):
    pipe = _pipe(parts, cls_name)
    out = run(pipe, guidance_end=0.3, cache_interval=2)
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
    cb = run(pipe, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.3), cache_interval=2)
    np.testing.assert_allclose(cb, out, atol=1e-5)  # after the cut-off the cache keeps the conditional rows


def test_nine_channel_inpainting_with_guidance_end(tmp_path):
    parts = tiny_sd_components(td, tmp_path / "tok", unet_in_channels=9)
    pipe = _pipe(parts, "StableDiffusionInpaintPipeline")
    out = run(pipe, guidance_end=0.5, cache_interval=2, cache_depth=3)
    cb = run(pipe, callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5), cache_interval=2, cache_depth=3)
    np.testing.assert_allclose(cb, out, atol=1e-5)
    assert np.array_equal(run(pipe, cache_interval=1), run(pipe))


def test_two_threads_with_different_settings_reproduce_their_sequential_images(parts):
    pipe = _pipe(parts)
    jobs = [
        dict(prompt="the cat", seed=1, guidance_scale=3.0, cache_interval=2, cache_depth=1, guidance_end=0.5),
        dict(prompt="a dog", seed=2, guidance_scale=9.0, cache_interval=3, cache_depth=3),
        dict(prompt="a photo", seed=3, guidance_scale=5.0, callback=SDCFGCutoffCallback(cutoff_step_ratio=0.3)),
    ]
    expected = []
    for job in jobs:
        job = dict(job)
        cb = job.pop("callback", None)
        expected.append(run(pipe, job.pop("prompt"), job.pop("seed"), callback_on_step_end=cb, **job))
    barrier = threading.Barrier(len(jobs), timeout=60)
    results, errors = {}, []

    def work(i, job):
        job = dict(job)
        inner = job.pop("callback", None)

        def callback(p, step, t, tensors):
            returned = inner(p, step, t, tensors) if inner is not None else {}
            barrier.wait()  # every call has finished this step before any goes on
            return returned

        try:
            results[i] = run(
                pipe, job.pop("prompt"), job.pop("seed"), callback_on_step_end=callback,
                callback_on_step_end_tensor_inputs=["prompt_embeds"], **job,
            )  # fmt: skip
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(len(jobs)):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-4)


@pytest.mark.parametrize("cls_name", SD_CLASSES)
@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(cache_interval=0), ValueError, "cache_interval"),
        (dict(cache_interval=-1), ValueError, "cache_interval"),
        (dict(cache_interval=2.0), TypeError, "cache_interval"),
        (dict(cache_interval=2, cache_depth=5), ValueError, "cache_depth"),
        (dict(cache_interval=2, cache_depth=0), ValueError, "cache_depth"),
        (dict(guidance_end=0.0), ValueError, "guidance_end"),
        (dict(guidance_end=1.5), ValueError, "guidance_end"),
        (dict(guidance_end=-0.2), ValueError, "guidance_end"),
        (dict(guidance_end=float("nan")), ValueError, "guidance_end"),
        (dict(guidance_end="half"), TypeError, "guidance_end"),
    ],
)
def test_bad_arguments_name_themselves(parts, cls_name, kwargs, error, name):
    pipe = _pipe(parts, cls_name)
    with pytest.raises(error, match=name):
        run(pipe, **kwargs)


def test_callback_arguments_checked():
    for kwargs in (dict(cutoff_step_ratio=None), dict(cutoff_step_ratio=0.5, cutoff_step_index=2)):
        with pytest.raises(ValueError, match="cutoff_step"):
            SDCFGCutoffCallback(**kwargs)
    with pytest.raises(ValueError, match="cutoff_step_ratio"):
        SDCFGCutoffCallback(cutoff_step_ratio=1.5)
    with pytest.raises(ValueError, match="cutoff_step_index"):
        SDCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=-1)


# ---- DDPM / DDIM --------------------------------------------------------------------------------------------


def _ddpm(cls):
    from tests.pipelines.test_ddpm_pipeline import tiny_unet

    unet = tiny_unet()
    p = cls(unet=unet, scheduler=td.DDPMScheduler(num_train_timesteps=50))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.mark.parametrize("cls", [td.DDPMPipeline, td.DDIMPipeline])
def test_unconditional_pipelines_cache(cls):
    pipe = _ddpm(cls)

    def images(**kwargs):
        return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=8,
                    output_type="np", **kwargs).images  # fmt: skip

    off = images()
    assert np.array_equal(images(cache_interval=1), off)
    assert np.array_equal(images(cache_interval=1, cache_depth=2), off)
    spy = []
    handle = pipe.unet.mid_block.register_forward_hook(lambda *a: spy.append(1))
    try:
        cached = images(cache_interval=4)
    finally:
        handle.remove()
    assert len(spy) == 2 and not np.array_equal(cached, off)
    with pytest.raises(ValueError, match="cache_interval"):
        images(cache_interval=0)
    with pytest.raises(ValueError, match="cache_depth"):
        images(cache_interval=2, cache_depth=3)


def test_unconditional_threads_with_different_cache_settings():
    pipe = _ddpm(td.DDIMPipeline)
    settings = [dict(cache_interval=2), dict(cache_interval=3, cache_depth=2), dict()]

    def images(s, seed):
        return pipe(generator=torch.Generator().manual_seed(seed), num_inference_steps=12, output_type="np",
                    **s).images  # fmt: skip

    expected = [images(s, i) for i, s in enumerate(settings)]
    results = {}
    threads = [
        threading.Thread(target=lambda i=i, s=s: results.__setitem__(i, images(s, i))) for i, s in enumerate(settings)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(settings)):
        np.testing.assert_allclose(results[i], expected[i], atol=1e-4)


def _class_conditional():
    torch.manual_seed(0)
    unet = td.UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, num_class_embeds=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()  # fmt: skip
    p = td.ClassConditionalPipeline(unet=unet, scheduler=td.DDIMScheduler(num_train_timesteps=50), null_class_label=3)
    p.set_progress_bar_config(disable=True)
    return p


def test_class_conditional_cache_and_guidance_end():
    pipe = _class_conditional()

    def images(**kwargs):
        return pipe([0, 2], guidance_scale=3.0, generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                    num_inference_steps=6, output_type="np", **kwargs).images  # fmt: skip

    spy = _UNetSpy(pipe.unet)
    try:
        off = images()
        assert np.array_equal(images(cache_interval=1, cache_depth=2), off)
        spy.batches.clear()
        cut = images(guidance_end=0.5)
        assert spy.batches == [4] * 4 + [2] * 2  # guided steps 0 .. int(6 * 0.5) = 3
        spy.full.clear()
        both = images(guidance_end=0.5, cache_interval=2)
        assert spy.full == [1, 0, 1, 0, 1, 0]
    finally:
        spy.remove()
    assert not np.array_equal(cut, off) and np.isfinite(both).all()
    for kwargs, name in ((dict(guidance_end=0), "guidance_end"), (dict(cache_interval=0), "cache_interval")):
        with pytest.raises(ValueError, match=name):
            images(**kwargs)
