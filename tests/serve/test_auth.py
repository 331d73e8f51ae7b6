"""``--token``: every route, the page included, needs the token; compared in constant time."""

from __future__ import annotations

import base64

import httpx
import pytest

from .conftest import running_server
from .test_api import SMALL

TOKEN = "s3cret-token"
ROUTES = [
    ("GET", "/", None),
    ("GET", "/static/app.js", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/sdapi/v1/samplers", None),
    ("GET", "/sdapi/v1/schedulers", None),
    ("GET", "/sdapi/v1/sd-models", None),
    ("GET", "/sdapi/v1/options", None),
    ("GET", "/sdapi/v1/progress", None),
    ("POST", "/sdapi/v1/interrupt", None),
    ("POST", "/sdapi/v1/txt2img", SMALL),
    ("POST", "/sdapi/v1/img2img", {**SMALL, "init_images": []}),
    ("GET", "/no/such/route", None),
]


@pytest.fixture(scope="module")
def guarded(engine):
    with running_server(engine, token=TOKEN) as url:
        yield url


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("method, path, body", ROUTES)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Bearer " + TOKEN[:-1], "Bearer " + TOKEN + "x", TOKEN, "Token " + TOKEN,
               basic("me", "wrong"), "Basic %%%"],  # fmt: skip
)
def test_refused_without_the_token(guarded, method, path, body, header):
    headers = {"Authorization": header} if header else {}
    r = httpx.request(method, guarded + path, json=body, headers=headers, timeout=60)
    assert r.status_code == 401
    assert r.json()["error"] == "Unauthorized" and "Bearer" in r.headers["WWW-Authenticate"]


@pytest.mark.parametrize("method, path, body", ROUTES[:-1])
def test_served_with_the_token(guarded, method, path, body):
    r = httpx.request(method, guarded + path, json=body, headers={"Authorization": "Bearer " + TOKEN}, timeout=60)
    assert r.status_code != 401
    assert r.status_code == (422 if path.endswith("img2img") else 200), r.text


def test_browser_login_with_basic_auth(guarded):
    """Browsers cannot send a Bearer header to open a page: HTTP Basic with the token as password works too."""
    r = httpx.get(guarded + "/", headers={"Authorization": basic("anyone", TOKEN)})
    assert r.status_code == 200 and "<form" in r.text
    assert 'Basic realm="torchdiffusion"' in httpx.get(guarded + "/").headers["WWW-Authenticate"]


def test_constant_time_comparison():
    import inspect

    from torchdiffusion.serve.app import _Guard

    assert "hmac.compare_digest" in inspect.getsource(_Guard._authorized)
