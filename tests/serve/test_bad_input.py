"""Every bad-input rule answers 4xx JSON naming the field (never a stack trace) before any work starts, and the
server keeps serving."""

from __future__ import annotations

import base64
import json
import socket

import httpx
import pytest

from .conftest import running_server
from .test_api import SMALL, b64_image

NOT_AN_IMAGE = base64.b64encode(b"these bytes are no image").decode()


def check_error(r: httpx.Response, status: int, field: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field, body
    assert field.split("[")[0].split(".")[0] in body["detail"], body
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


@pytest.fixture(scope="module")
def limited(engine):
    from torchdiffusion.serve import Limits

    limits = Limits(max_steps=50, max_pixels=64 * 64, max_batch=4, max_prompt_chars=1000, max_body_bytes=200_000)
    with running_server(engine, limits=limits) as url:
        yield url


@pytest.mark.parametrize(
    "route, fields, field",
    [
        ("txt2img", {"sampler_name": "Euler z"}, "sampler_name"),
        ("txt2img", {"sampler_name": 3}, "sampler_name"),
        ("txt2img", {"scheduler": "wobbly"}, "scheduler"),
        ("txt2img", {"sampler_name": "DDIM", "scheduler": "karras"}, "scheduler"),  # DDIM has no Karras grid
        ("txt2img", {"steps": 0}, "steps"),
        ("txt2img", {"steps": 10**6}, "steps"),
        ("txt2img", {"steps": 51}, "steps"),  # above --max-steps
        ("txt2img", {"steps": "20"}, "steps"),
        ("txt2img", {"steps": 2.5}, "steps"),
        ("txt2img", {"steps": True}, "steps"),
        ("txt2img", {"width": 13}, "width"),
        ("txt2img", {"width": 10**5}, "width"),
        ("txt2img", {"height": -8}, "height"),
        ("txt2img", {"width": 128, "height": 128}, "width"),  # above --max-pixels
        ("txt2img", {"cfg_scale": "7"}, "cfg_scale"),
        ("txt2img", {"cfg_scale": -1}, "cfg_scale"),
        ("txt2img", {"prompt": 5}, "prompt"),
        ("txt2img", {"prompt": ["a", "b"]}, "prompt"),
        ("txt2img", {"prompt": "x" * 1001}, "prompt"),
        ("txt2img", {"negative_prompt": "x" * 1001}, "negative_prompt"),
        ("txt2img", {"seed": -2}, "seed"),
        ("txt2img", {"seed": 2**70}, "seed"),
        ("txt2img", {"batch_size": 0}, "batch_size"),
        ("txt2img", {"batch_size": 5}, "batch_size"),  # above --max-batch
        ("txt2img", {"batch_size": 2, "n_iter": 3}, "batch_size"),
        ("txt2img", {"n_iter": 0}, "n_iter"),
        ("txt2img", {"force_task_id": "x" * 100}, "force_task_id"),
        ("img2img", {}, "init_images"),
        ("img2img", {"init_images": []}, "init_images"),
        ("img2img", {"init_images": "abc"}, "init_images"),
        ("img2img", {"init_images": ["***not base64***"]}, "init_images[0]"),
        ("img2img", {"init_images": [NOT_AN_IMAGE]}, "init_images[0]"),
        ("img2img", {"init_images": [b64_image((300, 300))]}, "init_images[0]"),  # > 4 x max_pixels
        ("img2img", {"init_images": [b64_image()], "mask": "%%%"}, "mask"),
        ("img2img", {"init_images": [b64_image()], "denoising_strength": 1.5}, "denoising_strength"),
        ("img2img", {"init_images": [b64_image()], "inpainting_mask_invert": 2}, "inpainting_mask_invert"),
    ],
)
def test_bad_field(limited, route, fields, field):
    body = {**SMALL, **fields}
    if route == "img2img" and "init_images" not in fields:
        body.pop("init_images", None)
    r = httpx.post(f"{limited}/sdapi/v1/{route}", json=body, timeout=60)
    check_error(r, 422, field)


@pytest.mark.parametrize("raw", ['{"prompt": "a", "cfg_scale": NaN}', '{"cfg_scale": Infinity}'])
def test_non_finite_cfg_scale(limited, raw):
    r = httpx.post(f"{limited}/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"})
    check_error(r, 422, "cfg_scale")


@pytest.mark.parametrize("raw", ['{"prompt": ', "[1, 2]", "null", '"text"'])
def test_not_a_json_object(limited, raw):
    r = httpx.post(f"{limited}/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"})
    check_error(r, 422, "body")


def test_megabyte_prompt(server):
    r = httpx.post(f"{server}/sdapi/v1/txt2img", json={**SMALL, "prompt": "cat " * 250_000}, timeout=60)
    check_error(r, 422, "prompt")


def test_body_over_the_limit(limited):
    r = httpx.post(f"{limited}/sdapi/v1/img2img", json={**SMALL, "init_images": ["A" * 300_000]}, timeout=60)
    check_error(r, 413, "body")


def test_chunked_body_over_the_limit(limited):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    r = httpx.post(f"{limited}/sdapi/v1/txt2img", content=chunks(), headers={"Content-Type": "application/json"})
    check_error(r, 413, "body")


def test_lying_content_length(limited):
    """A Content-Length over the limit is refused before the body is read."""
    host, port = limited.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 999999999\r\n\r\n{")  # fmt: skip
        answer = b""
        while b"}" not in answer.partition(b"\r\n\r\n")[2]:  # until the whole JSON body is in
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413"), head
    assert json.loads(body)["field"] == "body"


def test_server_keeps_serving(limited):
    for body in ({"steps": 0}, {"width": 13}, {"init_images": "x"}):
        httpx.post(f"{limited}/sdapi/v1/txt2img", json=body)
    assert httpx.post(f"{limited}/sdapi/v1/txt2img", json=SMALL, timeout=60).status_code == 200


def test_unexpected_errors_hide_the_stack(engine):
    def explode(job, step):
        raise RuntimeError("secret internal detail")

    with running_server(engine, step_hook=explode) as url:
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json=SMALL, timeout=60)
        assert r.status_code == 500
        assert r.json()["error"] == "InternalError"
        assert "secret" not in r.text and "Traceback" not in r.text
        r = httpx.post(f"{url}/sdapi/v1/txt2img", json={**SMALL, "steps": 0})
        assert r.status_code == 422  # still serving


def test_model_without_the_mode(engine, monkeypatch):
    monkeypatch.setattr(type(engine), "modes", lambda self: ("txt2img",))
    with running_server(engine) as url:
        r = httpx.post(f"{url}/sdapi/v1/img2img", json={**SMALL, "init_images": [b64_image()]}, timeout=60)
        check_error(r, 422, "init_images")
