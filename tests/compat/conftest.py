"""Shared fixtures of the parity tests: tiny Stable Diffusion folders written by the real Diffusers."""

import pytest

from tests.sd_fixtures import save_tiny_sd


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """A tiny random SD 1.x-layout pipeline folder saved by Diffusers (PNDM scheduler, CLIPTextModel)."""
    pytest.importorskip("diffusers")
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny_sd")


@pytest.fixture(scope="session")
def tiny_sd_inpaint_folder(tmp_path_factory):
    """The same with a 9-channel inpainting UNet, saved as a StableDiffusionInpaintPipeline."""
    pytest.importorskip("diffusers")
    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny_sd_inpaint", seed=1, inpaint=True)
