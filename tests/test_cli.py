import json
import os
import subprocess
import sys

import pytest
import torch

from torchdiffusion.cli import build_parser, main


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = [
    "--resolution",
    "8",
    "--model-channels",
    "8,16",
    "--layers-per-block",
    "1",
    "--steps",
    "3",
    "--batch-size",
    "4",
    "--checkpointing-steps",
    "2",
    "--sample-steps",
    "3",
    "--lr-warmup-steps",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cond"))
    assert main(["train", "--dataset", "digits", "--output-dir", out, "--class-conditional", *TINY]) == 0
    return out


def test_train_class_conditional_writes_a_pipeline_folder(trained):
    index = json.load(open(os.path.join(trained, "model_index.json")))
    assert index["_class_name"] == "ClassConditionalPipeline" and index["null_class_label"] == 10
    assert os.path.exists(os.path.join(trained, "samples.png"))


def test_resume_latest_continues(trained, capsys):
    assert (
        main(
            [
                "train",
                "--dataset",
                "digits",
                "--output-dir",
                trained,
                "--class-conditional",
                "--resume",
                "latest",
                *TINY[:-7],
                "--steps",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    log = json.load(open(os.path.join(trained, "train_log.json")))
    assert log["step"] == 4 and [h["step"] for h in log["history"]] == [4]


@pytest.mark.parametrize("extra", [["--class-label", "7"], ["--class-label", "7", "--scheduler", "ddim"], []])
def test_generate(trained, tmp_path, extra):
    from PIL import Image

    out = str(tmp_path / "grid.png")
    assert main(["generate", trained, "--num-images", "4", "--steps", "3", "--out", out, *extra]) == 0
    assert Image.open(out).size[0] > 8


def test_unconditional_train_and_generate(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--dataset", "digits", "--output-dir", out, *TINY]) == 0
    assert "pipeline folder" in capsys.readouterr().out
    assert main(["generate", out, "--num-images", "2", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["generate", out, "--num-images", "2", "--class-label", "3", "--out", str(tmp_path / "g.png")]) == 2
    assert "class_label" in capsys.readouterr().err
    assert main(["generate", out, "--fast", "--out", str(tmp_path / "g.png")]) == 2
    assert "fast" in capsys.readouterr().err


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["train", "--dataset", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o"), *TINY]) == 2
    assert "dataset" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits", "--output-dir", str(tmp_path / "o"), *TINY[:-1], "--steps", "0"]) == 2
    assert "max_steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--output-dir", "x", "--mixed-precision", "fp8"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--output-dir", "x", "--model-channels", "a,b"])


def test_python_dash_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "torchdiffusion", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "demo" in proc.stdout and "generate" in proc.stdout


def test_import_torchdiffusion_does_not_import_accelerate():
    code = "import sys, torchdiffusion, torchdiffusion.training, torchdiffusion.cli; print('accelerate' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


