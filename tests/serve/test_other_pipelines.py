"""Pipeline folders other than Stable Diffusion: txt2img only, at the model's own size; the prompt names the class
of a class-conditional model."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from .conftest import running_server

UNET = dict(
    sample_size=8, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip


def served(folder):
    from torchdiffusion.serve import Engine

    return running_server(Engine.load(folder, "cpu"))


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    import torch

    from torchdiffusion import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ddpm") / "tiny-ddpm"
    DDPMPipeline(unet=UNet2DModel(**UNET, in_channels=1, out_channels=1), scheduler=DDPMScheduler()).save_pretrained(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    import torch

    from torchdiffusion import DDPMScheduler, UNet2DModel
    from torchdiffusion.pipelines.class_conditional import ClassConditionalPipeline

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cc") / "tiny-classes"
    unet = UNet2DModel(**UNET, in_channels=3, out_channels=3, num_class_embeds=3)
    pipe = ClassConditionalPipeline(unet, DDPMScheduler(), null_class_label=2, id2label={"0": "cat", "1": "dog"})
    pipe.save_pretrained(folder)
    return folder


def images(r):
    assert r.status_code == 200, r.text
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in r.json()["images"]]


def test_unconditional(ddpm_folder):
    with served(ddpm_folder) as url:
        assert httpx.get(url + "/sdapi/v1/sd-models").json()[0]["modes"] == ["txt2img"]
        r = httpx.post(url + "/sdapi/v1/txt2img", json={"steps": 3, "seed": 1, "batch_size": 2}, timeout=60)
        out = images(r)
        assert [im.size for im in out] == [(8, 8)] * 2
        again = httpx.post(url + "/sdapi/v1/txt2img", json={"steps": 3, "seed": 2}, timeout=60)
        assert r.json()["images"][1] == again.json()["images"][0]
        r = httpx.post(url + "/sdapi/v1/txt2img", json={"steps": 3, "width": 16, "height": 16}, timeout=60)
        assert r.status_code == 422 and r.json()["field"] == "width" and "8x8" in r.json()["detail"]
        r = httpx.post(url + "/sdapi/v1/img2img", json={"steps": 3, "init_images": ["AAAA"]}, timeout=60)
        assert r.status_code == 422


def test_class_conditional_prompt_names_the_class(labelled_folder):
    with served(labelled_folder) as url:
        body = {"steps": 3, "seed": 1, "cfg_scale": 2.0, "sampler_name": "Euler"}
        cat = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "prompt": "cat"}, timeout=60)
        zero = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "prompt": "0"}, timeout=60)
        dog = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "prompt": "dog"}, timeout=60)
        assert images(cat)[0].size == (8, 8)
        pixels = [images(r)[0].tobytes() for r in (cat, zero, dog)]  # the PNGs' text differs: the prompt
        assert pixels[0] == pixels[1] != pixels[2]
        assert json.loads(cat.json()["info"])["sampler_name"] == "Euler"
        bad = httpx.post(url + "/sdapi/v1/txt2img", json={**body, "prompt": "unicorn"}, timeout=60)
        assert bad.status_code == 422 and "unicorn" in bad.json()["detail"]
