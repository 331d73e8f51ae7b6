"""torchdiffusion.training.EMAModel follows diffusers.training_utils.EMAModel's decay rule and update."""

import pytest
import torch

diffusers_training = pytest.importorskip("diffusers.training_utils")

from torchdiffusion.training.ema import EMAModel  # noqa: E402


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"decay": 0.99, "use_ema_warmup": True, "power": 3 / 4}, {"update_after_step": 3, "min_decay": 0.2}],
)
def test_same_shadows_as_diffusers(kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    ours = EMAModel(model, **kwargs)
    theirs = diffusers_training.EMAModel(model.parameters(), **kwargs)
    for step in range(12):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ours.step(model)
        theirs.step(model.parameters())
        assert ours.cur_decay_value == pytest.approx(theirs.cur_decay_value), step
    for a, b in zip(ours.shadow_params, theirs.shadow_params):
        torch.testing.assert_close(a, b)
