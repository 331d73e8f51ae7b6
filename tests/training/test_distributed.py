"""Two CPU processes (gloo DDP) give the loss trajectory of one process with the same global batch; only rank 0
writes files."""

import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("one"))
    (result,) = _run([sys.executable, "-m", "tests.training.dist_script", out, "8"])
    return result["losses"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(single, tmp_path, launcher):
    out = str(tmp_path / "two")
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    else:
        cmd = [
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
    results = _run([*cmd, "-m", "tests.training.dist_script", out, "4"])
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        assert r["losses"] == pytest.approx(single, rel=1e-4, abs=1e-6)
    assert all(r["writes"] == [] for r in results if r["rank"] == 1)
    assert os.path.exists(os.path.join(out, "model_index.json"))
