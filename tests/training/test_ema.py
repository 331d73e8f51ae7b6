import pytest
import torch

from torchdiffusion.training.ema import EMAModel


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def test_decay_rules():
    ema = EMAModel(_model(), decay=0.999)
    assert ema.get_decay(1) == 0.0
    assert ema.get_decay(2) == pytest.approx(2 / 11)
    assert ema.get_decay(10_000) == 0.999
    warm = EMAModel(_model(), decay=0.9999, use_ema_warmup=True, power=3 / 4)
    assert warm.get_decay(11) == pytest.approx(1 - 11**-0.75)
    late = EMAModel(_model(), update_after_step=5, min_decay=0.5)
    assert late.get_decay(5) == 0.0 and late.get_decay(7) == pytest.approx(max(0.5, 2 / 11))


def test_step_moves_shadows_towards_parameters():
    model = _model()
    ema = EMAModel(model, decay=0.5)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step(model)  # decay 0 on the first step: a copy
    assert all(torch.allclose(s, p) for s, p in zip(ema.shadow_params, model.parameters()))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step(model)
    d = ema.cur_decay_value
    for s, p0 in zip(ema.shadow_params, start):
        assert torch.allclose(s, d * (p0 + 1) + (1 - d) * (p0 + 2))


def test_frozen_parameters_are_copied():
    model = _model()
    model[0].weight.requires_grad_(False)
    ema = EMAModel(model, decay=0.9)
    ema.step(model)
    with torch.no_grad():
        model[0].weight.add_(5)
    ema.step(model)
    assert torch.equal(ema.shadow_params[0], model[0].weight)


def test_copy_store_restore_and_context():
    model, other = _model(), _model()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(3)
    ema = EMAModel(other)
    before = [p.detach().clone() for p in model.parameters()]
    with ema.average_parameters(model):
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), ema.shadow_params))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    with pytest.raises(RuntimeError, match="store"):
        ema.restore(model)


def test_state_dict_round_trip():
    model = _model()
    ema = EMAModel(model, decay=0.9, use_ema_warmup=True)
    for _ in range(3):
        ema.step(model)
    again = EMAModel(_model())
    again.load_state_dict(ema.state_dict())
    assert again.optimization_step == 3 and again.decay == 0.9 and again.use_ema_warmup
    assert all(torch.equal(a, b) for a, b in zip(again.shadow_params, ema.shadow_params))
    with pytest.raises(ValueError, match="shadow"):
        EMAModel(torch.nn.Linear(2, 2)).load_state_dict(ema.state_dict())


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"decay": 1.5}, "decay"),
        ({"min_decay": -1}, "min_decay"),
        ({"update_after_step": -1}, "update_after_step"),
        ({"power": 0}, "power"),
        ({"inv_gamma": -1.0}, "inv_gamma"),
    ],
)
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        EMAModel(_model(), **kwargs)


def test_step_with_other_parameters_is_refused():
    ema = EMAModel(_model())
    with pytest.raises(ValueError, match="parameters"):
        ema.step(torch.nn.Linear(2, 2))
