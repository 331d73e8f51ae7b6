import pytest
import torch

from torchdiffusion.core import prediction as P


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction", "flow"])
def test_conversions_recover_x0_and_eps(kind):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    if kind == "flow":
        s = 0.3
        a, sig, xt, out = 1 - s, s, (1 - s) * x0 + s * eps, eps - x0
    else:
        a, sig = 0.6, 0.8
        xt = a * x0 + sig * eps
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sig * x0}[kind]
    x0_hat, eps_hat = P.to_x0_eps(out, xt, a, sig, kind)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eps_hat, eps, atol=1e-5, rtol=1e-5)


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type"):
        P.to_x0_eps(torch.zeros(1), torch.zeros(1), 1.0, 0.0, "noise")


def test_epsilon_at_zero_snr_is_finite():
    x0, _ = P.to_x0_eps(torch.ones(1, 1), torch.zeros(1, 1), 0.0, 1.0, "epsilon")
    assert torch.isfinite(x0).all()
    x0, _ = P.to_x0_eps(torch.ones(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), torch.ones(2, 1), "epsilon")
    assert torch.isfinite(x0).all()


def test_thresholding():
    x = torch.linspace(-3, 3, 200).reshape(2, 1, 10, 10)
    out = P.threshold_sample(x, 0.995, 2.0)
    assert out.abs().max() <= 1.0 and out.shape == x.shape
    small = torch.full((1, 1, 2, 2), 0.5)
    assert torch.equal(P.threshold_sample(small), small)  # s clamps to 1: plain clipping
    half = x.half()
    assert P.threshold_sample(half).dtype == torch.float16


def test_process_x0():
    x = torch.tensor([[-3.0, 0.5, 3.0]])
    assert P.process_x0(x, {"clip_sample": True, "clip_sample_range": 2.0}).tolist() == [[-2.0, 0.5, 2.0]]
    assert torch.equal(P.process_x0(x, {"clip_sample": False}), x)


def test_add_noise_and_velocity_per_sample():
    x0, eps = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0)
    a, s = torch.tensor([0.6, 0.8]), torch.tensor([0.8, 0.6])
    xt = P.add_noise(x0, eps, a, s)
    assert xt[0].unique().item() == pytest.approx(2.2) and xt[1].unique().item() == pytest.approx(2.0)
    v = P.get_velocity(x0, eps, a, s)
    x0_hat, _ = P.to_x0_eps(v, xt, P.expand_as(a, xt), P.expand_as(s, xt), "v_prediction")
    torch.testing.assert_close(x0_hat, x0)


def test_check_same_shape():
    with pytest.raises(ValueError, match="model_output"):
        P.check_same_shape(torch.zeros(1, 3, 2, 2), torch.zeros(1, 4, 2, 2))
    with pytest.raises(TypeError, match="sample"):
        P.check_same_shape(torch.zeros(1), [0.0])
    P.check_same_shape(torch.zeros(1, 6, 2, 2), torch.zeros(1, 3, 2, 2), channels_factor=2)
