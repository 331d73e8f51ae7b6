import pytest
import torch
from scipy import integrate

from torchdiffusion import LMSDiscreteScheduler
from torchdiffusion.core.solvers import lms_coefficients

from .helpers import run, start


def test_coefficients_match_quadrature():
    sig = [14.6, 9.0, 5.5, 3.1, 1.7, 0.0]
    for i, order in [(0, 1), (1, 2), (2, 3), (4, 4)]:
        exact = lms_coefficients(sig, i, order)
        for j in range(order):

            def basis(tau, j=j, i=i, order=order):
                p = 1.0
                for k in range(order):
                    if k != j:
                        p *= (tau - sig[i - k]) / (sig[i - j] - sig[i - k])
                return p

            assert exact[j] == pytest.approx(integrate.quad(basis, sig[i], sig[i + 1], epsrel=1e-10)[0], rel=1e-8)


def test_run_and_history():
    s = LMSDiscreteScheduler(use_karras_sigmas=True)
    s.set_timesteps(6)
    assert torch.isfinite(run(s, start(s))).all() and len(s.derivatives) == 4
    s.set_timesteps(6)
    assert s.derivatives == []
    assert s.get_lms_coefficient(1, 0, 0) == pytest.approx(float(s.sigmas[1] - s.sigmas[0]))


def test_bad_order():
    s = LMSDiscreteScheduler()
    s.set_timesteps(3)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="order"):
        s.step(x, s.timesteps[0], x, order=0)
