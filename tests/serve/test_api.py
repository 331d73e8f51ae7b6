"""Each route of ``torchdiffusion serve`` through a real server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import re

import httpx
import numpy as np
import pytest
from PIL import Image

SMALL = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 7}


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def b64_image(size=(32, 32), color=(200, 30, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(server, route, body, **kw):
    return httpx.post(f"{server}/sdapi/v1/{route}", json=body, timeout=120, **kw)


def test_txt2img_shape_and_info(server):
    r = post(server, "txt2img", {**SMALL, "negative_prompt": "blur", "cfg_scale": 5.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    assert len(body["images"]) == 1
    image = png(body["images"][0])
    assert image.size == (32, 32)
    info = json.loads(body["info"])
    assert info["seed"] == 7 and info["all_seeds"] == [7]
    assert info["sampler_name"] == "DPM++ 2M" and info["cfg_scale"] == 5.5 and info["steps"] == 2
    assert "Seed: 7" in info["infotexts"][0] and "Negative prompt: blur" in info["infotexts"][0]
    assert image.info["parameters"] == info["infotexts"][0]  # A1111's PNG text chunk
    assert body["parameters"]["prompt"] == "a cat" and body["parameters"]["cfg_scale"] == 5.5


def test_default_size_is_the_models(server):
    r = post(server, "txt2img", {"prompt": "x", "steps": 1, "seed": 1})
    assert png(r.json()["images"][0]).size == (64, 64)  # tiny UNet sample_size 8 x VAE factor 8


def test_random_seed_is_reported_and_reproducible(server):
    first = post(server, "txt2img", {**SMALL, "seed": -1}).json()
    seed = json.loads(first["info"])["seed"]
    assert 0 <= seed < 2**32
    again = post(server, "txt2img", {**SMALL, "seed": seed}).json()
    assert again["images"] == first["images"]


def test_batch_and_iterations_use_consecutive_seeds(server):
    batch = post(server, "txt2img", {**SMALL, "batch_size": 2, "n_iter": 2}).json()
    assert json.loads(batch["info"])["all_seeds"] == [7, 8, 9, 10]
    assert len(batch["images"]) == 4
    # Image i depends on seed + i only. Same batch shape -> same bytes; a batch of one runs other matmul
    # shapes, so its pixels may differ by a rounding step (CI's 2-thread CPU showed one value off by 1).
    pair = post(server, "txt2img", {**SMALL, "seed": 9, "batch_size": 2}).json()
    assert png(batch["images"][2]).tobytes() == png(pair["images"][0]).tobytes()
    alone = post(server, "txt2img", {**SMALL, "seed": 9}).json()
    in_batch = np.asarray(png(batch["images"][2]), dtype=np.int16)
    diff = np.abs(in_batch - np.asarray(png(alone["images"][0]), dtype=np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.05


@pytest.mark.parametrize(
    "fields, sampler, grid",
    [
        ({"sampler_name": "Euler a"}, "Euler a", "automatic"),
        ({"sampler_name": "k_euler"}, "Euler", "automatic"),
        ({"sampler_name": "DPM++ 2M Karras"}, "DPM++ 2M", "karras"),
        ({"sampler_name": "DPM++ 2M", "scheduler": "Karras"}, "DPM++ 2M", "karras"),
        ({"sampler_name": "DDIM"}, "DDIM", "automatic"),
        ({"sampler_name": "UniPC", "scheduler": "sgm_uniform"}, "UniPC", "sgm_uniform"),
        ({"sampler_index": "Heun"}, "Heun", "automatic"),  # A1111's older field
    ],
)
def test_samplers_by_a1111_name(server, fields, sampler, grid):
    r = post(server, "txt2img", {**SMALL, **fields})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["sampler_name"], info["scheduler"]) == (sampler, grid)


def test_samplers_differ(server):
    a = post(server, "txt2img", {**SMALL, "steps": 3, "sampler_name": "Euler"}).json()["images"]
    b = post(server, "txt2img", {**SMALL, "steps": 3, "sampler_name": "DPM++ 2M SDE"}).json()["images"]
    assert a != b


def test_img2img_and_inpaint(server):
    init = b64_image()
    r = post(server, "img2img", {**SMALL, "init_images": ["data:image/png;base64," + init], "denoising_strength": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert png(body["images"][0]).size == (32, 32)
    assert "init_images" not in body["parameters"] and json.loads(body["info"])["denoising_strength"] == 0.5
    mask = b64_image(color=(255, 255, 255))
    inpaint = {**SMALL, "init_images": [init], "mask": mask, "denoising_strength": 1.0}
    r = post(server, "img2img", inpaint)
    assert r.status_code == 200, r.text
    inverted = post(server, "img2img", {**inpaint, "inpainting_mask_invert": 1})
    assert inverted.status_code == 200
    assert inverted.json()["images"] != r.json()["images"]


def test_img2img_resizes_the_init_image(server):
    r = post(server, "img2img", {**SMALL, "init_images": [b64_image((50, 20))], "width": 16, "height": 24})
    assert r.status_code == 200, r.text
    assert png(r.json()["images"][0]).size == (16, 24)


def test_send_images_false(server):
    r = post(server, "txt2img", {**SMALL, "send_images": False})
    assert r.status_code == 200 and r.json()["images"] == []


def test_list_routes(server):
    samplers = httpx.get(f"{server}/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert {"Euler a", "Euler", "DPM++ 2M", "DDIM", "PLMS", "UniPC"} <= set(names)
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    grids = httpx.get(f"{server}/sdapi/v1/schedulers").json()
    assert {"karras", "automatic"} <= {g["name"] for g in grids}
    models = httpx.get(f"{server}/sdapi/v1/sd-models").json()
    assert models[0]["model_name"] == "tiny-sd" and models[0]["title"] == "tiny-sd"
    assert "/" not in models[0]["filename"]  # the server's paths stay on the server
    assert httpx.get(f"{server}/sdapi/v1/options").json() == {"sd_model_checkpoint": "tiny-sd"}


def test_progress_and_interrupt_when_idle(server):
    p = httpx.get(f"{server}/sdapi/v1/progress").json()
    assert p["progress"] == 0 and p["state"]["job_count"] == 0 and p["current_image"] is None
    assert httpx.post(f"{server}/sdapi/v1/interrupt").json() == {"interrupted": 0}


def test_progress_of_a_finished_task(server):
    post(server, "txt2img", {**SMALL, "force_task_id": "task-42"})
    p = httpx.get(f"{server}/sdapi/v1/progress", params={"id_task": "task-42"}).json()
    assert p["progress"] == 1.0 and p["state"]["job"] == "task-42" and p["state"]["sampling_steps"] == 2


def test_docs_and_openapi(server):
    assert httpx.get(f"{server}/docs").status_code == 200
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    for route in ("txt2img", "img2img", "samplers", "sd-models", "progress", "interrupt"):
        assert f"/sdapi/v1/{route}" in paths


def test_page_is_self_contained(server):
    r = httpx.get(f"{server}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for field in ("prompt", "negative_prompt", "steps", "cfg_scale", "seed", "sampler_name", "width", "height"):
        assert f'id="{field}"' in page
    assert "<progress" in page and 'id="gallery"' in page
    for name in ("index.html", "app.js", "style.css"):
        text = httpx.get(f"{server}/" + ("" if name == "index.html" else f"static/{name}")).text
        assert not re.search(r"(src|href)\s*=\s*\"(https?:)?//", text), name  # nothing from another host
        assert "https://" not in text and "http://" not in text, name
    assert httpx.get(f"{server}/static/../app.py").status_code == 404
    assert httpx.get(f"{server}/static/app.py").status_code == 404


def test_progress_counts_img2img_steps_over_iterations(server):
    body = {**SMALL, "steps": 4, "n_iter": 2, "init_images": [b64_image()], "denoising_strength": 0.5}
    assert post(server, "img2img", {**body, "force_task_id": "img-42"}).status_code == 200
    state = httpx.get(f"{server}/sdapi/v1/progress", params={"id_task": "img-42"}).json()["state"]
    assert (state["sampling_step"], state["sampling_steps"]) == (4, 4)  # 2 of 4 steps at strength 0.5, twice
