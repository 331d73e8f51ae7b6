"""Two CPU processes (gloo DDP) give the loss trajectory and, to round-off, the final weights of one process with
the same global batch (the two ranks bit-identical to each other); only rank 0 writes files. ``accelerate launch``
(the README's command) in the default run, torchrun with ``-m slow``."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, results, timeout=300):
    """Run ``cmd`` (its last argument: the results folder); return each rank's (result dict, final weights)."""
    from safetensors.torch import load_file

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = sorted(int(f[4:-5]) for f in os.listdir(results) if f.endswith(".json"))
    out = []
    for r in ranks:
        with open(os.path.join(results, f"rank{r}.json")) as f:
            out.append((json.load(f), load_file(os.path.join(results, f"rank{r}.safetensors"))))
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out, results = str(tmp_path_factory.mktemp("one")), str(tmp_path_factory.mktemp("one_results"))
    ((result, weights),) = _run([sys.executable, "-m", "tests.training.dist_script", out, "8", results], results)
    return result["losses"], weights


def _launcher(launcher):
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes=2",
        "--num_machines=1",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        f"--main_process_port={_free_port()}",
    ]


@pytest.mark.parametrize("launcher", ["accelerate", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_two_processes_match_one(single, tmp_path, launcher):
    out, results = str(tmp_path / "two"), str(tmp_path / "results")
    os.makedirs(results)
    cmd = _launcher(launcher)
    (r0, w0), (r1, w1) = _run([*cmd, "-m", "tests.training.dist_script", out, "4", results], results)
    assert (r0["rank"], r1["rank"]) == (0, 1)
    losses, single_weights = single
    for r in (r0, r1):
        assert r["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-6)
    assert r1["writes"] == []
    assert os.path.exists(os.path.join(out, "model_index.json"))
    assert set(w0) == set(w1) == set(single_weights)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP: the two ranks hold bit-identical weights
    # Against one process: not bit-identical (one process reduces 8 per-sample gradients in one conv backward, two
    # reduce 4 + 4 and all-reduce the halves: another summation order), so the weights differ by round-off that
    # AdamW's normalised steps carry forward. A real divergence (another sample, noise draw or a gradient not
    # averaged) would move weights by ~lr = 1e-3 per step; the bound is a tenth of one step (measured: 4.5e-5).
    diff = max((w0[k] - single_weights[k]).abs().max().item() for k in w0)
    assert diff <= 1e-4, diff


def test_text_to_image_lora_on_two_processes_matches_one(tiny_sd_dir, captions_dir, tmp_path):
    """A LoRA text-to-image run (cached latents, caption dropout): 2 processes x 2 images == 1 process x 4."""
    pytest.importorskip("peft")
    runs = {}
    for name, cmd, batch in (("one", [sys.executable], "4"), ("two", _launcher("accelerate"), "2")):
        out, results = str(tmp_path / name), str(tmp_path / f"results_{name}")
        os.makedirs(results)
        runs[name] = _run([*cmd, "-m", "tests.training.dist_script", out, batch, results, tiny_sd_dir, captions_dir],
                          results)  # fmt: skip
    ((single, single_weights),) = runs["one"]
    (r0, w0), (r1, w1) = runs["two"]
    for r in (r0, r1):
        assert r["losses"] == pytest.approx(single["losses"], rel=1e-4, abs=1e-6)
    assert r1["writes"] == [] and os.path.exists(tmp_path / "two" / "pytorch_lora_weights.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    lora = [k for k in w0 if "lora_" in k]
    assert lora and max((w0[k] - single_weights[k]).abs().max().item() for k in lora) <= 1e-4
