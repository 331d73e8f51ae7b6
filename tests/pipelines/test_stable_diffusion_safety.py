"""StableDiffusionSafetyChecker built in code: the decision rule, the folder format, and the SD pipelines with a
checker (flags returned, flagged images black, the pipeline folder round trip, the requires_safety_checker
warning). Parity with Diffusers' checker is in tests/compat/test_sd_pipeline_parity.py."""

import json
import logging

import numpy as np
import pytest
import torch

import torchdiffusion as td
from tests.sd_fixtures import CLIP_CONFIG_KWARGS, tiny_feature_extractor, tiny_sd_components
from torchdiffusion.pipelines.stable_diffusion.safety_checker import cosine_similarity_matrix, nsfw_flags

pytest.importorskip("transformers")


def test_nsfw_flags_rule():
    concept_t, special_t = np.full(2, 0.5, np.float32), np.full(2, 0.5, np.float32)
    special = np.array([[0.0, 0.0], [0.6, 0.0], [0.0, 0.0], [0.5004, 0.0]], np.float32)
    concept = np.array([[0.2, 0.49], [0.2, 0.495], [0.51, 0.0], [0.0, 0.495]], np.float32)
    # 0: all below; 1: special fires, 0.495 + 0.01 > 0.5; 2: plain hit; 3: 0.0004 rounds to 0, no bonus
    assert nsfw_flags(special, special_t, concept, concept_t) == [False, True, True, False]
    assert nsfw_flags(np.zeros((0, 2)), special_t, np.zeros((0, 2)), concept_t) == []


def test_cosine_similarity_matrix():
    a, b = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    expected = torch.tensor([[1.0, 0.0], [2**-0.5, -(2**-0.5)]])
    torch.testing.assert_close(cosine_similarity_matrix(a, b), expected)


@pytest.fixture(scope="module")
def checker():
    torch.manual_seed(0)
    c = td.StableDiffusionSafetyChecker(**CLIP_CONFIG_KWARGS).eval()
    with torch.no_grad():
        c.concept_embeds.normal_()
        c.special_care_embeds.normal_()
    return c


def test_parameter_names_and_shapes(checker):
    state = checker.state_dict()
    assert state["concept_embeds"].shape == (17, 16) and state["special_care_embeds"].shape == (3, 16)
    assert state["concept_embeds_weights"].shape == (17,) and state["special_care_embeds_weights"].shape == (3,)
    assert state["visual_projection.weight"].shape == (16, 16)
    assert all(k.startswith("vision_model.") for k in state if "embeds" not in k and "projection" not in k)
    assert not any(p.requires_grad for n, p in checker.named_parameters() if "embeds" in n)


def test_forward_blacks_out_flagged_images_only(checker, caplog):
    clip_input = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    embeds = checker.image_embeds(clip_input)
    assert embeds.shape == (3, 16)
    images = torch.rand(3, 3, 8, 8) + 0.1
    _, flags = checker(clip_input, images.clone())
    assert flags == [False, False, False]  # thresholds 1: cos never exceeds
    original = checker.concept_embeds_weights.clone()
    try:
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(-1.0)  # every cosine beats -1
        with caplog.at_level(logging.WARNING):
            out, flags = checker(clip_input, images.clone())
        assert flags == [True] * 3 and out.abs().sum() == 0 and "NSFW" in caplog.text
        listed, flags = checker(clip_input, [im.numpy() for im in images])
        assert flags == [True] * 3 and all(isinstance(im, np.ndarray) and not im.any() for im in listed)
        with pytest.raises(ValueError, match="images"):
            checker(clip_input, images[:2].clone())
    finally:
        with torch.no_grad():
            checker.concept_embeds_weights.copy_(original)


def test_save_and_load_in_transformers_layout(checker, tmp_path):
    checker.save_pretrained(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    assert config["architectures"] == ["StableDiffusionSafetyChecker"] and config["model_type"] == "clip"
    assert config["projection_dim"] == 16 and config["vision_config"]["image_size"] == 32
    assert (tmp_path / "c" / "model.safetensors").is_file()
    loaded = td.StableDiffusionSafetyChecker.from_pretrained(tmp_path / "c")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in checker.state_dict().items())
    checker.save_pretrained(tmp_path / "b", safe_serialization=False, variant="fp16")
    assert (tmp_path / "b" / "pytorch_model.fp16.bin").is_file()
    loaded = td.StableDiffusionSafetyChecker.from_pretrained(tmp_path / "b", variant="fp16", torch_dtype=torch.half)
    assert loaded.dtype == torch.float16
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        td.StableDiffusionSafetyChecker.from_pretrained(tmp_path / "b")
    with pytest.raises(TypeError, match="torch_dtype"):
        td.StableDiffusionSafetyChecker.from_pretrained(tmp_path / "c", torch_dtype="half")
    with pytest.raises(TypeError, match="bogus"):
        td.StableDiffusionSafetyChecker.from_pretrained(tmp_path / "c", bogus=1)
    with pytest.raises(ValueError, match="variant"):
        checker.save_pretrained(tmp_path / "d", variant="../x")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, checker):
    parts = tiny_sd_components(td, tmp_path_factory.mktemp("tok"))
    parts.update(safety_checker=checker, feature_extractor=tiny_feature_extractor())
    p = td.StableDiffusionPipeline(**parts)
    p.set_progress_bar_config(disable=True)
    return p


def test_pipeline_returns_flags_and_round_trips(pipe, tmp_path):
    out = pipe("the cat", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.nsfw_content_detected == [False] and out.images.any()
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["feature_extractor"][0] == "transformers" and index["requires_safety_checker"] is True
    loaded = td.DiffusionPipeline.from_pretrained(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.safety_checker) is td.StableDiffusionSafetyChecker
    again = loaded("the cat", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert again.nsfw_content_detected == [False]
    np.testing.assert_allclose(again.images, out.images, atol=1e-5)
    # older SD folders name the feature extractor CLIPFeatureExtractor (gone from transformers 5)
    index["feature_extractor"] = ["transformers", "CLIPFeatureExtractor"]
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    old = td.StableDiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(old.feature_extractor).__name__.startswith("CLIPImageProcessor")
    # components are shared with the other SD pipelines (the checker runs there too)
    img2img = td.StableDiffusionImg2ImgPipeline(**loaded.components)
    img2img.set_progress_bar_config(disable=True)
    res = img2img("the cat", image=out.images, strength=0.5, num_inference_steps=2, output_type="np")
    assert res.nsfw_content_detected == [False]


def test_requires_safety_checker_warning(pipe, caplog):
    parts = {**pipe.components, "safety_checker": None, "feature_extractor": None}
    with caplog.at_level(logging.WARNING):
        td.StableDiffusionPipeline(**parts)
    assert "safety checker" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        quiet = td.StableDiffusionPipeline(**parts, requires_safety_checker=False)
    assert "safety checker" not in caplog.text and quiet.config.requires_safety_checker is False
    with pytest.raises(ValueError, match="feature_extractor"):
        td.StableDiffusionPipeline(**{**pipe.components, "feature_extractor": None})
