"""StableDiffusionPipeline (text-to-image) with tiny models built in code: outputs, reproducibility, threads,
callbacks, loading and saving, and an error naming the argument for every bad input."""

import threading

import numpy as np
import pytest
import torch

import torchdiffusion as td
from tests.sd_fixtures import tiny_sd_components

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    parts = tiny_sd_components(td, tmp_path_factory.mktemp("tok"))
    p = td.StableDiffusionPipeline(**parts, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def run(pipe, prompt="the cat", seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    if "generator" not in kwargs:
        kwargs["generator"] = gen(seed)
    return pipe(prompt, **kwargs)


def test_output_types(pipe):
    out = run(pipe)
    assert isinstance(out, td.StableDiffusionPipelineOutput)
    assert out.images.shape == (1, 64, 64, 3) and out.nsfw_content_detected is None
    assert 0 <= out.images.min() and out.images.max() <= 1
    pil = run(pipe, output_type="pil").images
    assert len(pil) == 1 and pil[0].size == (64, 64)
    pt = run(pipe, output_type="pt").images
    assert pt.shape == (1, 3, 64, 64)
    pt.mul_(2)  # outputs are ordinary tensors (not inference-mode ones)
    latents = run(pipe, output_type="latent").images
    assert latents.shape == (1, 4, 8, 8)
    images, nsfw = run(pipe, return_dict=False)
    np.testing.assert_allclose(images, out.images, atol=1e-6)
    assert nsfw is None
    assert run(pipe, height=32, width=48).images.shape == (1, 32, 48, 3)


def test_same_seed_same_image_alone_or_in_a_batch(pipe):
    prompts = ["the cat", "a dog", "a photo", "the dog"]
    batch = run(pipe, prompts, generator=[gen(s) for s in range(4)], negative_prompt=["x", "", "y", "z"]).images
    for i, prompt in enumerate(prompts):
        alone = run(pipe, prompt, seed=i, negative_prompt=["x", "", "y", "z"][i]).images[0]
        assert np.abs(alone - batch[i]).max() <= 1e-4
    per_prompt = run(pipe, "the cat", generator=[gen(0), gen(5)], num_images_per_prompt=2).images
    assert np.abs(per_prompt[0] - run(pipe, seed=0).images[0]).max() <= 1e-4
    assert np.abs(per_prompt[1] - run(pipe, seed=5).images[0]).max() <= 1e-4


def _interleaved(pipe, jobs, **kwargs):
    """Run ``jobs`` ((prompt, seed, guidance_scale) each) in threads whose steps interleave: every step's callback
    waits at a barrier for the other threads, so all calls are in the middle of their runs at once. Returns
    ({job index: images}, {job index: [guidance_scale read in each callback]})."""
    barrier = threading.Barrier(len(jobs), timeout=60)
    results, seen, errors = {}, {i: [] for i in range(len(jobs))}, []

    def work(i, prompt, seed, scale):
        def callback(p, step, t, tensors):
            seen[i].append(p.guidance_scale)
            barrier.wait()  # both calls have finished this step before either goes on
            return {}

        try:
            out = run(pipe, prompt, seed=seed, guidance_scale=scale, callback_on_step_end=callback, **kwargs)
            results[i] = out.images
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results, seen


@pytest.mark.parametrize("scheduler_cls", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_two_threads_give_the_images_of_two_calls_in_a_row(pipe, scheduler_cls):
    # multistep schedulers keep a history of model outputs: a scheduler shared between the calls would mix them
    pipe.scheduler = getattr(td, scheduler_cls).from_config(pipe.scheduler.config)
    try:
        jobs = [("the cat", 1, 7.5), ("a dog", 2, 7.5)]
        expected = [run(pipe, p, seed=s, num_inference_steps=4).images for p, s, _ in jobs]
        results, seen = _interleaved(pipe, jobs, num_inference_steps=4)
        assert all(len(v) == 4 for v in seen.values())
        # Shared state (scheduler history, per-call settings) leaking between the calls would change the images
        # by far more than 1e-4; concurrent calls may split CPU reductions across fewer threads (round-off only).
        for i in range(2):
            np.testing.assert_allclose(results[i], expected[i], atol=1e-4)
    finally:
        pipe.scheduler = td.PNDMScheduler.from_config(pipe.scheduler.config)


def test_each_thread_reads_its_own_call_values(pipe):
    results, seen = _interleaved(pipe, [("the cat", 1, 3.0), ("a dog", 2, 9.0)], num_inference_steps=3)
    assert seen[0] == [3.0] * 4 and seen[1] == [9.0] * 4  # PNDM: 3 steps + 1
    assert pipe.guidance_scale in (3.0, 9.0)  # the call that finished last
    for i, (prompt, seed, scale) in enumerate([("the cat", 1, 3.0), ("a dog", 2, 9.0)]):
        alone = run(pipe, prompt, seed=seed, guidance_scale=scale, num_inference_steps=3).images
        np.testing.assert_allclose(results[i], alone, atol=1e-4)
    assert pipe.guidance_scale == 9.0


def test_prompt_embeds_give_the_same_image(pipe):
    pos, neg = pipe.encode_prompt("the cat", "cpu", 1, True, "dog")
    assert pos.shape == neg.shape == (1, 77, 32)
    a = run(pipe, negative_prompt="dog").images
    b = run(pipe, None, prompt_embeds=pos, negative_prompt_embeds=neg).images
    np.testing.assert_allclose(a, b, atol=1e-6)
    pos2, neg2 = pipe.encode_prompt(["a", "b"], "cpu", 3, False)
    assert pos2.shape == (6, 77, 32) and neg2 is None
    torch.testing.assert_close(pos2[0], pos2[2])


def test_clip_skip_uses_an_earlier_layer(pipe):
    tokens = pipe.tokenizer(["the cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(tokens, output_hidden_states=True).hidden_states[-2]
        text_model = getattr(pipe.text_encoder, "text_model", pipe.text_encoder)
        expected = text_model.final_layer_norm(hidden)
        got, _ = pipe.encode_prompt("the cat", "cpu", 1, False, clip_skip=1)
    torch.testing.assert_close(got, expected)
    assert np.abs(run(pipe, clip_skip=1).images - run(pipe).images).max() > 0


def test_long_prompt_is_cut_with_a_warning(pipe):
    with pytest.warns(UserWarning, match="cut off"):
        embeds, _ = pipe.encode_prompt("the cat " * 60, "cpu", 1, False)
    assert embeds.shape[1] == 77


def test_guidance_one_skips_the_negative_branch(pipe):
    seen = []

    def callback(p, i, t, tensors):
        seen.append((tensors["prompt_embeds"].shape[0], tensors["negative_prompt_embeds"]))
        return {}

    run(
        pipe,
        guidance_scale=1.0,
        callback_on_step_end=callback,
        callback_on_step_end_tensor_inputs=["prompt_embeds", "negative_prompt_embeds"],
    )
    assert seen and all(n == 1 and neg is None for n, neg in seen)


def test_callbacks_read_and_replace_tensors_and_interrupt(pipe):
    steps = []

    def callback(p, i, t, tensors):
        steps.append((i, p.guidance_scale, p.num_timesteps))
        if i == 1:
            p._interrupt = True
        return {"latents": tensors["latents"] * 0}

    out = run(pipe, num_inference_steps=4, output_type="latent", callback_on_step_end=callback).images
    assert [s[0] for s in steps] == [0, 1] and steps[0][1] == 7.5 and steps[0][2] == 5  # PNDM: 4 steps + 1
    assert torch.count_nonzero(out) == 0
    # after the call the properties show the last finished call's values (as Diffusers' attributes do)
    assert pipe.guidance_scale == 7.5 and pipe._guidance_scale == 7.5 and pipe.interrupt and pipe.num_timesteps == 5
    assert pipe.do_classifier_free_guidance
    run(pipe, num_inference_steps=2, guidance_scale=1.0)
    assert pipe.guidance_scale == 1.0 and not pipe.interrupt and pipe.num_timesteps == 3
    assert not pipe.do_classifier_free_guidance


@pytest.mark.parametrize("name", ["guidance_scale", "_guidance_scale", "_interrupt", "num_timesteps", "clip_skip"])
def test_call_properties_cannot_be_set_outside_a_call(pipe, name):
    with pytest.raises(AttributeError, match=name.lstrip("_")):
        setattr(pipe, name, 3.0)


def test_a_fresh_pipeline_shows_the_defaults(tmp_path):
    parts = tiny_sd_components(td, tmp_path)
    fresh = td.StableDiffusionPipeline(**parts, requires_safety_checker=False)
    assert fresh.guidance_scale is None and fresh.num_timesteps == 0 and not fresh.interrupt
    assert fresh.guidance_rescale == 0.0 and fresh.clip_skip is None and fresh.cross_attention_kwargs is None
    assert not fresh.do_classifier_free_guidance


def test_guidance_cutoff_from_a_callback(pipe):
    def cutoff(p, i, t, tensors):
        if i == 0:
            p._guidance_scale = 0.0
            return {"prompt_embeds": tensors["prompt_embeds"].chunk(2)[-1]}
        return {}

    out = run(pipe, callback_on_step_end=cutoff, callback_on_step_end_tensor_inputs=["prompt_embeds"]).images
    assert np.isfinite(out).all() and np.abs(out - run(pipe).images).max() > 0


def test_guidance_rescale_eta_and_custom_grids(pipe):
    assert np.abs(run(pipe, guidance_rescale=0.7).images - run(pipe).images).max() > 0
    pipe.scheduler = td.DDIMScheduler.from_config(pipe.scheduler.config)
    try:
        a = run(pipe, eta=1.0).images
        assert np.abs(a - run(pipe, eta=0.0).images).max() > 0
        assert run(pipe, timesteps=[900, 500, 100]).images.shape == (1, 64, 64, 3)
    finally:
        pipe.scheduler = td.PNDMScheduler.from_config(pipe.scheduler.config)


def test_given_latents_are_used(pipe):
    latents = torch.randn(1, 4, 8, 8, generator=gen(3))
    a = run(pipe, latents=latents, seed=1).images
    b = run(pipe, latents=latents, seed=2).images
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_memory_switches_keep_the_image(pipe):
    base = run(pipe, ["a", "b"]).images
    pipe.enable_attention_slicing("max")
    pipe.enable_vae_slicing()
    try:
        np.testing.assert_allclose(run(pipe, ["a", "b"]).images, base, atol=1e-5)
    finally:
        pipe.disable_attention_slicing()
        pipe.disable_vae_slicing()


def test_fp16_vae_overflow_is_decoded_in_fp32(pipe):
    import copy

    vae = copy.deepcopy(pipe.vae)
    with torch.no_grad():  # a first feature map just under fp16's limit (65504): fp16 rounds part of it to inf
        vae.decoder.conv_in.weight.mul_(100)
        vae.decoder.conv_in.bias.fill_(6.5e4)
    latents = torch.randn(1, 4, 8, 8, generator=gen())
    with torch.no_grad():
        expected = vae.decode(latents / vae.config.scaling_factor).sample
    half = copy.deepcopy(vae).half()
    with torch.no_grad():
        raw = half.decode((latents / vae.config.scaling_factor).half()).sample
    assert not torch.isfinite(raw).all()  # the plain fp16 decode overflows
    p = td.StableDiffusionPipeline(**{**pipe.components, "vae": half, "requires_safety_checker": False})
    with torch.no_grad():
        image = p._decode(latents.half())
    assert torch.isfinite(image).all()
    torch.testing.assert_close(image.float(), expected, atol=1e-2, rtol=1e-2)


def test_safety_checker_flags_are_returned_and_images_blacked_out(pipe):
    class FakeChecker(torch.nn.Module):
        def forward(self, images, clip_input):
            images = images.clone()
            images[0] = 0
            return images, [True] + [False] * (images.shape[0] - 1)

    class FakeExtractor:
        def __call__(self, images, return_tensors):
            class Batch(dict):
                def to(self, device):
                    return self

            batch = Batch()
            batch.pixel_values = torch.zeros(len(images), 3, 8, 8)
            return batch

    p = td.StableDiffusionPipeline(
        **{**pipe.components, "safety_checker": FakeChecker(), "feature_extractor": FakeExtractor()}
    )
    p.set_progress_bar_config(disable=True)
    out = run(p, ["a", "b"])
    assert out.nsfw_content_detected == [True, False]
    assert out.images[0].max() == 0 and out.images[1].max() > 0
    with pytest.raises(ValueError, match="feature_extractor"):
        td.StableDiffusionPipeline(**{**pipe.components, "safety_checker": FakeChecker()})


def test_components_build_the_other_sd_pipelines(pipe):
    img2img = td.StableDiffusionImg2ImgPipeline(**pipe.components)
    inpaint = td.StableDiffusionInpaintPipeline(**pipe.components)
    assert img2img.unet is pipe.unet and inpaint.vae is pipe.vae
    assert set(pipe.components) >= {"vae", "text_encoder", "tokenizer", "unet", "scheduler", "safety_checker"}


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = td.DiffusionPipeline.load_config(tmp_path)
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["safety_checker"] == [None, None]
    loaded = td.DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is td.StableDiffusionPipeline
    np.testing.assert_allclose(run(loaded).images, run(pipe).images, atol=1e-6)
    swapped = td.StableDiffusionPipeline.from_pretrained(
        tmp_path, scheduler=td.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    )
    assert type(swapped.scheduler) is td.EulerDiscreteScheduler


def test_old_configs_are_corrected(pipe):
    import logging

    scheduler = td.PNDMScheduler.from_config({**pipe.scheduler.config, "steps_offset": 0})
    ddim = td.DDIMScheduler.from_config({**pipe.scheduler.config, "clip_sample": True})
    unet = td.UNet2DConditionModel.from_config({**pipe.unet.config, "sample_size": 32, "_diffusers_version": "0.8.0"})
    logging.disable(logging.WARNING)
    try:
        td.StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler, "unet": unet})
        td.StableDiffusionPipeline(**{**pipe.components, "scheduler": ddim})
    finally:
        logging.disable(logging.NOTSET)
    assert scheduler.config.steps_offset == 1 and ddim.config.clip_sample is False
    assert unet.config.sample_size == 64


BAD = [
    (dict(height=60), "height"),
    (dict(width=33), "width"),
    (dict(prompt=None), "prompt"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32)), "prompt_embeds"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), "negative_prompt"),
    (dict(negative_prompt="x", negative_prompt_embeds=torch.zeros(1, 77, 32)), "negative_prompt"),
    (
        dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32), negative_prompt_embeds=torch.zeros(2, 77, 32)),
        "negative_prompt_embeds",
    ),
    (dict(generator=[torch.Generator()] * 3), "generator"),
    (dict(prompt=["a", "b"], num_images_per_prompt=2, generator=[torch.Generator()] * 2), "generator"),
    (dict(latents=torch.zeros(1, 4, 4, 4)), "latents"),
    (dict(guidance_scale=float("nan")), "guidance_scale"),
    (dict(guidance_rescale=2.0), "guidance_rescale"),
    (dict(output_type="jpeg"), "output_type"),
    (
        dict(callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs=["noise"]),
        "callback_on_step_end_tensor_inputs",
    ),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(clip_skip=5), "clip_skip"),
    (dict(prompt=3), "prompt"),
    (dict(timesteps=[900, 100], sigmas=[1.0, 0.0]), "timesteps"),
    (dict(eta=-1.0), "eta"),
]


@pytest.mark.parametrize("kwargs,name", BAD, ids=[f"{n}-{i}" for i, (_, n) in enumerate(BAD)])
def test_bad_arguments_name_the_argument(pipe, kwargs, name):
    kwargs = {"prompt": "the cat", "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        pipe(**kwargs)


def test_prepare_latents_takes_the_calls_scheduler(pipe):
    scheduler = td.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    z = pipe.prepare_latents(2, 4, 64, 64, torch.float32, "cpu", gen(0), scheduler=scheduler)
    expected = torch.randn(2, 4, 8, 8, generator=gen(0)) * scheduler.init_noise_sigma
    torch.testing.assert_close(z, expected)
    with pytest.raises(TypeError, match="scheduler"):  # no silent fallback to the shared pipe.scheduler
        pipe.prepare_latents(2, 4, 64, 64, torch.float32, "cpu", gen(0))
