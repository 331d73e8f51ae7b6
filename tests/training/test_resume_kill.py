"""Resume after a real killed process: N steps straight == K steps, SIGKILL, resume to N (CPU, fp32)."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from torchdiffusion.training import checkpoint as ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _start(mode, out, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.training.run_script", mode, out, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _run(mode, out, *extra):
    proc = _start(mode, out, *extra)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return output


def _kill_when(mode, out, line_start, *extra):
    proc = _start(mode, out, *extra)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(line_start):
            break
    else:
        proc.wait()
        raise AssertionError("".join(seen))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    return "".join(seen)


def _final_weights(out):
    return load_file(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))


def _model_at(out, step):
    return load_file(os.path.join(out, "checkpoints", ckpt.checkpoint_name(step), "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    _run("straight", out)
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_kill_after_checkpoint_then_resume_is_exact(straight, tmp_path):
    out = str(tmp_path)
    _kill_when("hang_after_4", out, "SAVED 4")
    assert ckpt.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("checkpoint-000004")
    assert not os.path.exists(os.path.join(out, "model_index.json"))
    _run("resume", out)
    _assert_same(_final_weights(straight), _final_weights(out))  # EMA weights of the exported pipeline
    _assert_same(_model_at(straight, 6), _model_at(out, 6))  # training weights


def test_kill_while_writing_a_checkpoint_leaves_a_resumable_latest(straight, tmp_path):
    out = str(tmp_path)
    _kill_when("hang_inside_4", out, "WRITING")
    root = os.path.join(out, "checkpoints")
    assert any(".tmp-" in name for name in os.listdir(root))  # the half-written one is there...
    assert ckpt.latest_checkpoint(root).endswith("checkpoint-000002")  # ...but latest is the complete one
    _run("resume", out)
    _assert_same(_final_weights(straight), _final_weights(out))
    assert not any(".tmp-" in name for name in os.listdir(root))


def test_text_to_image_lora_run_killed_after_a_checkpoint_resumes_exactly(tiny_sd_dir, captions_dir, tmp_path):
    """The same for a LoRA text-to-image run (its checkpoints hold only the adapters; the cache is rebuilt)."""
    pytest.importorskip("peft")
    straight, out = str(tmp_path / "straight"), str(tmp_path / "killed")
    _run("straight", straight, tiny_sd_dir, captions_dir)
    _kill_when("hang_after_4", out, "SAVED 4", tiny_sd_dir, captions_dir)
    assert not os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors"))
    _run("resume", out, tiny_sd_dir, captions_dir)
    lora = "pytorch_lora_weights.safetensors"
    _assert_same(load_file(os.path.join(straight, lora)), load_file(os.path.join(out, lora)))
    _assert_same(_model_at(straight, 6), _model_at(out, 6))
