import json
import os

import pytest
import torch

from torchdiffusion.training import checkpoint as ckpt


def _state(value=1.0):
    model = {"w": torch.full((2, 2), value)}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    return {
        "model": model,
        "ema": model,
        "optimizer": opt.state_dict(),
        "random_states": {"torch_cpu": torch.get_rng_state()},
        "trainer": {"losses": [0.5]},
    }


def test_save_load_latest_and_prune(tmp_path):
    root = str(tmp_path / "checkpoints")
    for step in (2, 4, 6):
        path = ckpt.save_checkpoint(root, step, _state(step), keep_last=2)
        assert os.path.basename(path) == f"checkpoint-{step:06d}"
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4, 6]
    assert ckpt.latest_checkpoint(root).endswith("checkpoint-000006")
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(root))
    assert state["trainer"]["step"] == 6 and torch.equal(state["model"]["w"], torch.full((2, 2), 6.0))
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-3
    assert ckpt.resolve_resume("latest", root) == ckpt.latest_checkpoint(root)
    assert ckpt.resolve_resume(None, root) is None
    assert ckpt.resolve_resume("latest", str(tmp_path / "none")) is None


def test_incomplete_checkpoints_are_never_latest(tmp_path):
    root = str(tmp_path)
    ckpt.save_checkpoint(root, 2, _state())
    # a newer folder without marker, one with a truncated file, and a leftover temp folder
    os.makedirs(os.path.join(root, "checkpoint-000008"))
    torn = ckpt.save_checkpoint(root, 6, _state())
    with open(os.path.join(torn, "model.safetensors"), "r+b") as f:
        f.truncate(10)
    os.makedirs(os.path.join(root, ".checkpoint-000010.tmp-999999"))
    with open(os.path.join(root, "checkpoint-000008", ckpt.MARKER), "w") as f:
        f.write("{not json")
    assert ckpt.latest_checkpoint(root).endswith("checkpoint-000002")
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        ckpt.resolve_resume(torn, root)
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.load_checkpoint(torn)
    ckpt.save_checkpoint(root, 4, _state(), keep_last=1)  # prunes complete ones and leftovers only
    assert not os.path.exists(os.path.join(root, ".checkpoint-000010.tmp-999999"))
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4]


def test_same_step_is_replaced(tmp_path):
    ckpt.save_checkpoint(str(tmp_path), 3, _state(1.0))
    ckpt.save_checkpoint(str(tmp_path), 3, _state(2.0))
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))
    assert float(state["model"]["w"][0, 0]) == 2.0
    marker = json.load(open(os.path.join(ckpt.latest_checkpoint(str(tmp_path)), ckpt.MARKER)))
    assert marker["step"] == 3 and "optimizer.pt" in marker["files"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-000003"]
