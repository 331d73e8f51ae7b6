"""Sampling error per model call, every scheduler of both libraries, on a problem whose answer is known.

Data: a Gaussian mixture (8 components, 4 dimensions), so the exact noise prediction ``eps*(x, t)`` under the Stable
Diffusion training schedule (scaled_linear 0.00085..0.012, 1000 steps) is analytic. From the same starting noise
each scheduler samples with that exact model; the reference is the probability-flow ODE solved by 4th-order
Runge-Kutta in log(sigma) with 400 steps (1e-8 from a 800-step solve). Reported: the mean Euclidean distance between
the scheduler's samples and the reference (256 samples) at 5, 10 and 20 model calls, each scheduler at the best
settings found (a search over sigma grids, orders, solver types and final steps; every grid starts at the noisiest
timestep, so all solve the same ODE). Stochastic samplers are listed for completeness: they do not follow the ODE.

    python benchmarks/sampler_error.py            # the table and the ratio (about 10 minutes on 2 cores)
    python benchmarks/sampler_error.py --quick    # a smaller search
    python benchmarks/sampler_error.py --tune 10  # re-derive core.grids.ODE_TUNED[10] (about 10 minutes)

The last line prints ``ratio = our best at 10 calls / Diffusers' best at 10 calls`` (goal <= 0.8). The tuned grids
were fitted on six *other* mixtures (2, 4 and 8 dimensions, other seeds); this benchmark's mixture was held out.
The line before it gives the same ratio without the tuned grids (ours restricted to grids Diffusers also has, plus
the solver forms only ours can run).
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import logging
import math
import warnings

import numpy as np
import torch

import torchdiffusion as td
from torchdiffusion.core.grids import karras_sigmas

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
CALLS = (5, 10, 20)
STOCHASTIC = {"DDPMScheduler", "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LCMScheduler",
              "TCDScheduler"}  # fmt: skip
NOT_APPLICABLE = {"FlowMatchEulerDiscreteScheduler": "needs a flow-matching model"}
TRAIN_SETS = [(4, 20), (2, 21), (8, 22), (4, 11), (2, 12), (8, 13)]  # (dim, seed) of the grid-tuning mixtures


# ---- the data set and its exact denoiser ----------------------------------------------------------------------
class GaussianMixture:
    """``sum_k w_k N(mu_k, s_k^2 I)`` in ``dim`` dimensions; ``denoise(z, sigma) = E[x0 | x0 + sigma eps = z]``."""

    def __init__(self, dim: int = 4, k: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.dim = dim
        self.mu = torch.randn(k, dim, generator=g, dtype=torch.float64) * 1.2
        self.s = 0.08 + 0.3 * torch.rand(k, generator=g, dtype=torch.float64)
        self.logw = torch.log(torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0))

    def denoise(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        """``z`` ``(B, dim)``: the posterior mean of x0 given the VE point ``z`` at noise level ``sigma``."""
        z = z.double()
        var = self.s**2 + sigma**2  # (k,)
        d2 = ((z[:, None, :] - self.mu[None]) ** 2).sum(-1)
        post = torch.softmax(self.logw - 0.5 * d2 / var - 0.5 * self.dim * torch.log(var), dim=1)
        means = self.mu[None] + (self.s**2 / var)[None, :, None] * (z[:, None, :] - self.mu[None])
        return (post[..., None] * means).sum(1)


class ExactModel:
    """The exact "UNet" for a scheduler: eps prediction for VP schedulers (``x_t = alpha x0 + sigma eps``) at
    training timestep ``t`` (fractional t: log-linear between training levels, the inverse of ``sigma_to_t``), or
    the EDM network output ``F`` (``timestep = log(sigma) / 4``, input ``c_in x``). Counts its calls."""

    def __init__(self, data: GaussianMixture, train_sigmas: np.ndarray, edm: bool = False) -> None:
        self.data, self.edm, self.calls = data, edm, 0
        self.log_sigmas = np.log(np.asarray(train_sigmas, dtype=np.float64))

    def sigma(self, t) -> float:
        if self.edm:
            return math.exp(4 * float(t))
        return float(np.exp(np.interp(float(t), np.arange(len(self.log_sigmas)), self.log_sigmas)))

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        self.calls += 1
        s = self.sigma(t)
        if self.edm:  # D = c_skip z + c_out F with sigma_data = 0.5
            z = x.double() * math.sqrt(s * s + 0.25)
            c_skip, c_out = 0.25 / (s * s + 0.25), s * 0.5 / math.sqrt(s * s + 0.25)
            return ((self.data.denoise(z, s) - c_skip * z) / c_out).to(x.dtype)
        z = x.double() * math.sqrt(1 + s * s)  # the VE point x / alpha
        return ((z - self.data.denoise(z, s)) / s).to(x.dtype)


def reference(data: GaussianMixture, z: torch.Tensor, sigma_start: float, steps: int = 400) -> torch.Tensor:
    """Solve ``dz/dlog(sigma) = z - D(z, sigma)`` from ``sigma_start`` to 1e-5 with RK4, then take D (error ~1e-10)."""
    grid = np.linspace(math.log(sigma_start), math.log(1e-5), steps + 1)

    def f(zz, s):
        return zz - data.denoise(zz, math.exp(s))

    z = z.double()
    for a, b in zip(grid[:-1], grid[1:]):
        h = b - a
        k1 = f(z, a)
        k2 = f(z + 0.5 * h * k1, a + 0.5 * h)
        k3 = f(z + 0.5 * h * k2, a + 0.5 * h)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(z + h * k3, b))
    return data.denoise(z, 1e-5)


# ---- running a scheduler ----------------------------------------------------------------------------------------
class Bench:
    def __init__(self, data: GaussianMixture, samples: int = 256) -> None:
        ab = td.DDPMScheduler(**SD).alphas_cumprod.double()
        self.train_sigmas = ((1 - ab) / ab).sqrt().numpy()
        self.data = data
        self.noise = torch.randn(samples, data.dim, generator=torch.Generator().manual_seed(1))
        self.refs: dict = {}

    def run(self, cls, cfg: dict, n: int, set_kw: dict | None = None, batch: int | None = None):
        """One hand-written loop; returns ``(final sample, reference, model calls)``."""
        s = cls(**cfg)
        s.set_timesteps(**(set_kw or {"num_inference_steps": n}))
        model = ExactModel(self.data, self.train_sigmas, edm=cls.__name__.startswith("EDM"))
        x = self.noise[:batch] * s.init_noise_sigma
        sig0 = model.sigma(s.timesteps[0])
        ve = float(s.init_noise_sigma) > 1.5  # variance-exploding samplers start at noise * sigma_max
        z0 = x.double() if ve else x.double() * math.sqrt(1 + sig0**2)
        stochastic = "generator" in inspect.signature(s.step).parameters
        kw = {"generator": torch.Generator().manual_seed(0)} if stochastic else {}
        for t in s.timesteps:
            x = s.step(model(s.scale_model_input(x, t), t), t, x, **kw).prev_sample
        if batch is not None:
            return x, None, model.calls
        key = (round(sig0, 5), round(float(z0[0, 0]), 5))
        if key not in self.refs:
            self.refs[key] = reference(self.data, z0, sig0)
        return x.double(), self.refs[key], model.calls

    def steps_for(self, cls, cfg: dict, calls: int) -> int | None:
        """The most steps whose loop makes at most ``calls`` model calls."""
        best = None
        for n in range(1, calls + 1):
            try:
                used = self.run(cls, cfg, n, batch=1)[2]
            except Exception:  # noqa: BLE001 - a setting that cannot run n steps
                continue
            if used <= calls:
                best = n
        return best

    def error(self, cls, cfg: dict, calls: int) -> float:
        n = self.steps_for(cls, cfg, calls)
        if n is None:
            return math.nan
        try:
            out, ref, _ = self.run(cls, cfg, n)
        except Exception:  # noqa: BLE001 - Diffusers raises for some settings: they are just not eligible
            return math.nan
        err = (out - ref).norm(dim=1).mean().item()
        return err if math.isfinite(err) else math.nan


def options(name: str, ours: bool, quick: bool) -> list[dict]:
    """The settings searched for a scheduler; ``ours`` adds options only this library has."""
    grids = [{}, dict(use_karras_sigmas=True), dict(use_exponential_sigmas=True)]
    grids += [dict(use_ode_tuned_sigmas=True)] if ours else []
    if quick:
        grids = grids[1:]
    if name == "DPMSolverMultistepScheduler":
        algos = [dict(algorithm_type="dpmsolver++")] + [dict(algorithm_type="dpmsolver", final_sigmas_type="sigma_min")]
        algos += [dict(algorithm_type="dpmsolver")] if ours else []  # noise prediction down to sigma = 0
        rest = [dict(solver_order=o, solver_type=t) for o in (2, 3) for t in ("midpoint", "heun")]
        return [{**a, **b, **c} for a, b, c in itertools.product(grids + [dict(use_lu_lambdas=True)], algos, rest)]
    if name == "UniPCMultistepScheduler":
        forms = [dict(final_sigmas_type="zero"), dict(predict_x0=False, final_sigmas_type="sigma_min")]
        forms += [dict(predict_x0=False, final_sigmas_type="zero")] if ours else []  # Diffusers returns NaN here
        rest = [dict(solver_order=o, solver_type=t) for o in (2, 3) for t in ("bh1", "bh2")]
        return [{**a, **b, **c} for a, b, c in itertools.product(grids, forms, rest)]
    if name == "DEISMultistepScheduler":
        return [{**a, "solver_order": o} for a in grids for o in (2, 3)]
    if name == "DPMSolverSinglestepScheduler":
        return [{**a, "solver_order": o, "solver_type": t} for a in grids for o in (2, 3) for t in ("midpoint", "heun")]
    if name == "EDMDPMSolverMultistepScheduler":
        edm = [dict(sigma_schedule=k) for k in ("karras", "exponential")]
        return [{**a, "solver_order": o, "solver_type": t} for a in edm for o in (2, 3) for t in ("midpoint", "heun")]
    if name == "EDMEulerScheduler":
        return [dict(sigma_schedule=k) for k in ("karras", "exponential")]
    if name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
                "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler"):  # fmt: skip
        return [{**a, "timestep_spacing": "linspace"} for a in grids if "use_ode_tuned_sigmas" not in a]
    if name == "PNDMScheduler":
        return [dict(skip_prk_steps=k, timestep_spacing="trailing") for k in (True, False)]
    if name in ("DDIMScheduler", "DDPMScheduler", "LCMScheduler", "TCDScheduler"):
        return [dict(timestep_spacing="trailing")]
    return [{}]


def settings(cls, cfg: dict) -> dict:
    params = inspect.signature(cls.__init__).parameters
    base = dict(SD) if "beta_schedule" in params else dict(sigma_min=0.0292, sigma_max=14.6146)  # EDM: SD's range
    base["clip_sample"] = False  # the mixture is not inside [-1, 1]
    return {k: v for k, v in {**base, **cfg}.items() if k in params}


def table(quick: bool) -> None:
    import diffusers

    bench = Bench(GaussianMixture())
    names = sorted(n for n in td._LAZY if n.endswith("Scheduler") and not n.startswith("Karras"))
    results: dict = {}
    results_untuned: dict = {}  # ours without the grids tuned on other mixtures (use_ode_tuned_sigmas)
    for lib_name, lib in (("diffusers", diffusers), ("ours", td)):
        for name in names:
            if name in NOT_APPLICABLE or not hasattr(lib, name):
                continue
            cls = getattr(lib, name)
            for calls in CALLS:
                best = untuned = (math.nan, None)
                for cfg in options(name, lib is td, quick):
                    cfg = settings(cls, cfg)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        err = bench.error(cls, cfg, calls)
                    if math.isfinite(err) and not err >= best[0]:  # (a NaN best is replaced)
                        best = (err, cfg)
                    if math.isfinite(err) and not err >= untuned[0] and not cfg.get("use_ode_tuned_sigmas"):
                        untuned = (err, cfg)
                results[(lib_name, name, calls)] = best
                if lib is td:
                    results_untuned[(name, calls)] = untuned
    print(f"{'':10s} {'scheduler':34s}" + "".join(f"{c:>4d} calls" for c in CALLS) + "   best settings at 10 calls")
    for (lib_name, name, calls), _ in sorted(results.items()):
        if calls != CALLS[0]:
            continue
        row = "".join(f"{results[(lib_name, name, c)][0]:10.4f}" for c in CALLS)
        cfg = {k: v for k, v in (results[(lib_name, name, 10)][1] or {}).items() if k not in SD}
        note = " (stochastic)" if name in STOCHASTIC else ""
        print(f"{lib_name:10s} {name + note:34s}{row}   {json.dumps(cfg)}")
    for name, why in NOT_APPLICABLE.items():
        print(f"{'both':10s} {name:34s}   not run: {why}")
    best = {}
    for lib_name in ("diffusers", "ours"):
        errs = [(v[0], k[1]) for k, v in results.items() if k[0] == lib_name and k[2] == 10 and math.isfinite(v[0])]
        best[lib_name] = min(errs)
        print(f"{lib_name} best at 10 calls: {best[lib_name][0]:.4f} ({best[lib_name][1]})")
    untuned = min((v[0], k[0]) for k, v in results_untuned.items() if k[1] == 10 and math.isfinite(v[0]))
    print(f"ours best at 10 calls without the tuned grids: {untuned[0]:.4f} ({untuned[1]})")
    print(f"ratio without the tuned grids = {untuned[0] / best['diffusers'][0]:.3f}")
    print(f"ratio = {best['ours'][0] / best['diffusers'][0]:.3f}  (goal <= 0.8)")


def tune(n: int) -> None:
    """Fit the ODE_TUNED positions for ``n`` steps on the training mixtures (Powell search, from Karras rho=12)."""
    from scipy.optimize import minimize

    benches = [Bench(GaussianMixture(dim=d, seed=s)) for d, s in TRAIN_SETS]
    smin, smax = float(benches[0].train_sigmas[0]), float(benches[0].train_sigmas[-1])
    lo, hi = math.log(smin), math.log(smax)
    cfg = settings(td.UniPCMultistepScheduler, dict(predict_x0=False, solver_order=3, solver_type="bh2"))

    def positions(p):
        inc, end = np.exp(p[: n - 1]), 1.3 / (1 + math.exp(-p[n - 1]))
        return np.concatenate([[0.0], np.cumsum(inc) / inc.sum() * end])

    def loss(p):
        sig = np.append(np.exp(hi + positions(p) * (lo - hi)), 0.0)
        if not np.all(np.diff(sig[:-1]) < 0) or sig[-2] < smin * 0.999:
            return 10.0
        errs = []
        for b in benches:
            out, ref, _ = b.run(td.UniPCMultistepScheduler, cfg, n, set_kw={"sigmas": sig})
            errs.append((out - ref).norm(dim=1).mean().item())
        return float(np.mean(errs))

    pos0 = (np.log(karras_sigmas(smin, smax, n, 12.0)) - hi) / (lo - hi)
    p0 = np.concatenate([np.log(np.diff(pos0)), [math.log(1 / 0.3)]])
    r = minimize(loss, p0, method="Powell", options={"maxiter": 3000, "xtol": 1e-3, "ftol": 1e-5})
    print(f"start {loss(p0):.4f} tuned {r.fun:.4f}\n{n}: {tuple(np.round(positions(r.x), 4).tolist())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller search")
    parser.add_argument("--tune", type=int, metavar="STEPS", help="re-fit the tuned grid for STEPS steps")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    logging.disable(logging.WARNING)
    if args.tune:
        tune(args.tune)
    else:
        table(args.quick)


if __name__ == "__main__":
    main()
