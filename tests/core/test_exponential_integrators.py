"""The exponential-integrator coefficients of core.exponential_integrators against closed forms and exact integrals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchdiffusion.core import exponential_integrators as M


def level(sigma_ve: float) -> M.Level:
    return M.alpha_sigma(sigma_ve)


def exact_data_update(base, target, poly, sde=False):
    """x_t = (s_t/s_s)[e^-h] x_s + c a_t int_0^h e^{-c(h-u)} D(u) du for a polynomial D(u), by quadrature."""
    h = M.half_log_snr(target) - M.half_log_snr(base)
    c = 2.0 if sde else 1.0
    u = np.linspace(0, h, 20001)
    return c * target[0] * np.trapezoid(np.exp(-c * (h - u)) * poly(u), u)


@pytest.mark.parametrize("sde", [False, True])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_exact_variant_integrates_polynomials_exactly(order, sde):
    # outputs sampled from a polynomial of degree order-1 in lambda: the update must be exact
    levels = [level(s) for s in (1.3, 2.2, 4.0)][:order]
    target = level(0.7)
    lam0 = M.half_log_snr(levels[0])
    coef = np.random.default_rng(0).normal(size=order)

    def poly(u):
        return sum(c * u**k for k, c in enumerate(coef))

    outs = [poly(M.half_log_snr(lv) - lam0) for lv in levels]
    step = M.multistep(levels, target, order, "data", sde, "exact")
    got = sum(c * m for c, m in zip(step.m, outs))
    assert got == pytest.approx(exact_data_update(levels[0], target, poly, sde), rel=1e-6, abs=1e-9)


def test_noise_form_is_exact_for_polynomials():
    levels = [level(s) for s in (0.9, 1.6, 3.0)]
    target = level(0.4)
    lam0 = M.half_log_snr(levels[0])
    h = M.half_log_snr(target) - lam0

    def poly(u):
        return 0.3 - 0.7 * u + 0.2 * u**2

    outs = [poly(M.half_log_snr(lv) - lam0) for lv in levels]
    step = M.multistep(levels, target, 3, "noise")
    (a_s, _), (a_t, s_t) = levels[0], target
    u = np.linspace(0, h, 20001)
    want = -s_t * np.trapezoid(np.exp(h - u) * poly(u), u)
    assert step.x == pytest.approx(a_t / a_s)
    assert sum(c * m for c, m in zip(step.m, outs)) == pytest.approx(want, rel=1e-6)


def test_dpmsolver_closed_forms():
    """The Diffusers-compatible variants equal DPM-Solver++(2M) midpoint/heun and 3M as published."""
    s0, s1, s2, t = level(2.0), level(3.5), level(6.0), level(1.1)
    lam = [M.half_log_snr(v) for v in (t, s0, s1, s2)]
    h, h0, h1 = lam[0] - lam[1], lam[1] - lam[2], lam[2] - lam[3]
    r0, r1 = h0 / h, h1 / h
    a_t, phi1 = t[0], math.expm1(-h)
    # 2M midpoint: x_t = (s_t/s_0) x - a_t phi1 D0 - 0.5 a_t phi1 D1, D1 = (m0 - m1) / r0
    mid = M.multistep([s0, s1], t, 2, variant="midpoint")
    assert mid.m[0] == pytest.approx(-a_t * phi1 * (1 + 0.5 / r0))
    assert mid.m[1] == pytest.approx(a_t * phi1 * 0.5 / r0)
    assert mid.x == pytest.approx(t[1] / s0[1])
    # 2M heun: + a_t (phi1 / h + 1) D1
    heun = M.multistep([s0, s1], t, 2, variant="exact")
    assert heun.m[1] == pytest.approx(-a_t * (phi1 / h + 1) / r0)
    # 3M: D2 weighted by a_t ((e^-h - 1 + h)/h^2 - 0.5) (half the exact quadratic term)
    m3 = M.multistep([s0, s1, s2], t, 3, variant="dpmsolver_3m")
    phi2, phi3 = phi1 / h + 1, (phi1 + h) / h**2 - 0.5
    d1_0, d1_1 = np.array([1, -1, 0]) / r0, np.array([0, 1, -1]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    want = -a_t * phi1 * np.array([1, 0, 0]) + a_t * phi2 * d1 - a_t * phi3 * d2
    np.testing.assert_allclose(m3.m, want, rtol=1e-9)


def test_sde_first_order_closed_form_and_noise():
    s, t = level(2.0), level(1.0)
    h = M.half_log_snr(t) - M.half_log_snr(s)
    step = M.multistep([s], t, 1, "data", sde=True)
    assert step.x == pytest.approx(t[1] / s[1] * math.exp(-h))
    assert step.m[0] == pytest.approx(t[0] * (1 - math.exp(-2 * h)))
    assert step.noise == pytest.approx(t[1] * math.sqrt(1 - math.exp(-2 * h)))
    noise_form = M.multistep([s], t, 1, "noise", sde=True)
    assert noise_form.m[0] == pytest.approx(-2 * t[1] * math.expm1(h))
    assert noise_form.noise == pytest.approx(t[1] * math.sqrt(math.expm1(2 * h)))


def test_step_to_zero_is_the_denoised_sample_in_both_forms():
    s, zero = level(0.5), (1.0, 0.0)
    data = M.multistep([s, level(0.9)], zero, 2, "data")
    assert data.x == 0.0 and data.m == (1.0, 0.0)
    noise = M.multistep([s], zero, 1, "noise")  # x0 = (x - sigma eps) / alpha
    assert noise.x == pytest.approx(1 / s[0]) and noise.m[0] == pytest.approx(-s[1] / s[0])


def test_zero_length_step_is_identity():
    s = level(0.3)
    assert M.multistep([s, level(0.6)], s, 2, "noise") == M.LinearStep(1.0, (0.0, 0.0))
    assert M.unipc_step([s, level(0.6)], s, 2, "data", "bh1") == M.LinearStep(1.0, (0.0, 0.0))


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("form", ["data", "noise"])
def test_unipc_to_zero_is_finite(variant, form):
    step = M.unipc_step([level(0.2), level(0.5)], (1.0, 0.0), 2, form, variant)
    assert all(math.isfinite(c) for c in (step.x, *step.m))


def test_unipc_order2_predictor_matches_paper():
    """UniP-2 with B(h) = e^{-h} - 1 (bh2): x_t = DDIM - a_t B(h) * 0.5 * (m1 - m0) / r1."""
    s0, s1, t = level(1.0), level(2.0), level(0.5)
    h = M.half_log_snr(t) - M.half_log_snr(s0)
    r1 = (M.half_log_snr(s1) - M.half_log_snr(s0)) / h
    step = M.unipc_step([s0, s1], t, 2, "data", "bh2")
    b_h = math.expm1(-h)
    assert step.m[1] == pytest.approx(-t[0] * b_h * 0.5 / r1)
    assert step.m[0] == pytest.approx(-t[0] * b_h - (-t[0] * b_h * 0.5 / r1))


def test_linear_step_apply_and_errors():
    x, m = torch.ones(2, 3), torch.full((2, 3), 2.0)
    out = M.LinearStep(0.5, (0.25,), 1.0).apply(x, [m], noise=torch.zeros(2, 3))
    torch.testing.assert_close(out, torch.ones(2, 3))
    with pytest.raises(ValueError, match="noise"):
        M.LinearStep(0.5, (0.25,), 1.0).apply(x, [m])
    with pytest.raises(ValueError, match="outputs"):
        M.LinearStep(0.5, (0.25, 0.1)).apply(x, [m])
    with pytest.raises(ValueError, match="form"):
        M.multistep([level(1.0)], level(0.5), 1, "velocity")
    with pytest.raises(ValueError, match="order"):
        M.multistep([level(1.0)], level(0.5), 2)
