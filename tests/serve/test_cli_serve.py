"""``torchdiffusion serve``: the subcommand, the default model, the printed URL, the lazy FastAPI import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from torchdiffusion import cli
from torchdiffusion.serve.app import default_model


def test_default_model_is_the_embedded_one(monkeypatch, tmp_path):
    from torchdiffusion import pretrained

    assert default_model() == pretrained.embedded_model_path()
    monkeypatch.setitem(pretrained._FOLDERS, pretrained.EMBEDDED_MODEL, str(tmp_path / "absent"))
    assert default_model() is None


def test_missing_default_model_says_pass_model(monkeypatch, capsys):
    monkeypatch.setattr("torchdiffusion.serve.app.default_model", lambda: None)
    assert cli.main(["serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "torchdiffusion serve: error:" in err and "MODEL" in err and "pipeline folder" in err


def test_help_lists_the_options(capsys):
    try:
        cli.main(["serve", "--help"])
    except SystemExit as exit_:
        assert exit_.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--token", "--workers", "--max-queue", "--max-steps", "--max-pixels",
                 "--max-batch"):  # fmt: skip
        assert flag in out


@pytest.mark.parametrize(
    "flags, name",
    [(["--max-steps", "0"], "max_steps"), (["--max-pixels", "-1"], "max_pixels"), (["--workers", "0"], "workers"),
     (["--max-queue", "-1"], "max_queue"), (["--port", "-5"], "port"), (["--token", " "], "token")],  # fmt: skip
)
def test_bad_options_name_the_option(capsys, monkeypatch, flags, name):
    def no_load(*args, **kwargs):
        raise AssertionError("checked after loading the model")

    monkeypatch.setattr("torchdiffusion.serve.engine.Engine.load", no_load)
    assert cli.main(["serve", "some/folder", *flags]) == 2
    assert name in capsys.readouterr().err


def test_import_torchdiffusion_does_not_import_fastapi():
    code = ("import sys, torchdiffusion, torchdiffusion.cli; torchdiffusion.cli.build_parser(); "
            "print([m for m in ('fastapi', 'uvicorn', 'starlette', 'pydantic') if m in sys.modules])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("model", ["tiny-sd", "embedded"])
def test_serve_prints_the_url_and_serves(sd_folder, model):
    """A given folder, and no MODEL at all: the embedded model answers a txt2img request."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    given = [sd_folder] if model == "tiny-sd" else []
    proc = subprocess.Popen([sys.executable, "-m", "torchdiffusion", "serve", *given, "--port", "0", "--workers",
                             "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    name = "tiny-sd" if model == "tiny-sd" else "captioned-digits"
    try:
        line = proc.stdout.readline()
        assert f"torchdiffusion serve: {name} at http://127.0.0.1:" in line, (line, proc.stderr.read())
        url = line.split(" at ")[1].split(" ")[0]
        for _ in range(300):  # uvicorn starts right after the line is printed
            try:
                r = httpx.get(url + "sdapi/v1/sd-models", timeout=5)
                break
            except httpx.ConnectError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        assert r.json()[0]["model_name"] == name
        if model == "embedded":
            body = {"prompt": "a red 7 on a blue background", "steps": 4, "seed": 1}
            answer = httpx.post(url + "sdapi/v1/txt2img", json=body, timeout=120).json()
            assert len(answer["images"]) == 1 and json.loads(answer["info"])["seed"] == 1
    finally:
        proc.terminate()
        proc.wait(30)
