import pytest
import torch

from torchdiffusion.training.losses import diffusion_loss, loss_weights, sample_noise, snr, training_target


def test_targets():
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    a, s = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
    assert torch.equal(training_target("epsilon", x0, noise, a, s), noise)
    assert torch.equal(training_target("sample", x0, noise, a, s), x0)
    v = training_target("v_prediction", x0, noise, a, s)
    assert torch.allclose(v, a.view(-1, 1, 1, 1) * noise - s.view(-1, 1, 1, 1) * x0)
    with pytest.raises(ValueError, match="prediction_type"):
        training_target("flow_x", x0, noise, a, s)


def test_min_snr_weights():
    ac = torch.tensor([0.99, 0.5, 0.01], dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    r = snr(ac, t)
    assert torch.allclose(r, torch.tensor([99.0, 1.0, 1 / 99]))
    eps = loss_weights(r, "min_snr", "epsilon", gamma=5.0)
    assert torch.allclose(eps, torch.tensor([5 / 99, 1.0, 1.0]))
    v = loss_weights(r, "min_snr", "v_prediction", gamma=5.0)
    assert torch.allclose(v, torch.tensor([5 / 100, 0.5, (1 / 99) / (1 / 99 + 1)]))
    x0 = loss_weights(r, "min_snr", "sample", gamma=5.0)
    assert torch.allclose(x0, torch.tensor([5.0, 1.0, 1 / 99]))
    assert loss_weights(r, "none", "epsilon") is None
    with pytest.raises(ValueError, match="loss_weighting"):
        loss_weights(r, "p2", "epsilon")


def test_offset_noise_and_loss():
    g = torch.Generator().manual_seed(0)
    plain = sample_noise((3, 2, 4, 4), torch.Generator().manual_seed(0))
    offset = sample_noise((3, 2, 4, 4), g, noise_offset=0.5)
    delta = offset - plain
    assert delta.std() > 0 and torch.allclose(delta, delta[..., :1, :1].expand_as(delta))  # constant per channel
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    assert diffusion_loss(pred, target) == 1.0
    assert diffusion_loss(pred, target, torch.tensor([1.0, 3.0])) == 2.0
