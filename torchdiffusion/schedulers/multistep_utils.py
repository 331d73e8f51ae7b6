"""Shared base of the multistep schedulers (DPM-Solver multistep / single-step, DEIS, UniPC).

They visit integer training timesteps, keep ``n + 1`` variance-exploding noise levels ``sigmas`` (the model is fed
the sample unscaled: ``x = alpha x0 + sigma_vp eps`` with ``alpha = 1 / sqrt(1 + sigma^2)``) and a short history
of converted model outputs. The update maths is in :mod:`torchdiffusion.core.exponential_integrators`, the grids in
:mod:`torchdiffusion.core.grids`; this mixin holds the bookkeeping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core import exponential_integrators as M
from ..core import prediction as P
from ..core.grids import multistep_schedule, sigma_grid_kind
from ..core.schedules import check_choice
from .scheduling_utils import StepIndexMixin, TrainedScheduleMixin, check_noise, noise_like

MULTISTEP_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction")
# Values another solver family writes into a shared config; Diffusers maps them to this family's default on swaps.
TO_DPM = {"algorithm_type": {"deis": "dpmsolver++"}, "solver_type": dict.fromkeys(("logrho", "bh1", "bh2"), "midpoint")}
TO_DEIS = {"algorithm_type": dict.fromkeys(("dpmsolver", "dpmsolver++"), "deis"),
           "solver_type": dict.fromkeys(("midpoint", "heun", "bh1", "bh2"), "logrho")}  # fmt: skip
TO_UNIPC = {"solver_type": dict.fromkeys(("midpoint", "heun", "logrho"), "bh2")}


def remap_legacy(scheduler: Any, aliases: dict, **allowed: tuple) -> None:
    """Replace a foreign family's ``algorithm_type``/``solver_type`` by this family's default (as Diffusers does
    after ``from_config`` swaps); any other unknown value is a ``ValueError`` naming the key."""
    for key, ok in allowed.items():
        value = scheduler.config[key]
        if value in aliases.get(key, {}):
            scheduler.register_to_config(**{key: aliases[key][value]})
        else:
            check_choice(key, value, ok)


class MultistepMixin(StepIndexMixin, TrainedScheduleMixin):
    """Schedule, grid, model-output conversion, history and ``add_noise`` of the multistep schedulers.

    Subclasses set ``_style`` (see :func:`~torchdiffusion.core.grids.multistep_schedule`) and ``_form``
    (``"data"`` or ``"noise"``, or override :meth:`_output_form`).
    """

    _style = "dpmsolver"
    _form = "data"
    init_noise_sigma = 1.0

    def _init_multistep(self) -> None:
        """Call at the end of ``__init__``: validate the config and build the schedule and default grid."""
        cfg = self.config
        self._init_trained_schedule({k: v for k, v in cfg.items() if k != "prediction_type"})
        check_choice("prediction_type", cfg.prediction_type, MULTISTEP_PREDICTION_TYPES)
        order = cfg.solver_order
        if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 3:
            raise ValueError(f"solver_order must be 1, 2 or 3, got {order!r}")
        check_choice("final_sigmas_type", cfg.get("final_sigmas_type", "zero"), ("zero", "sigma_min"))
        # only learned variances change anything here; DDPM's fixed_* values arrive with from_config swaps
        sigma_grid_kind(cfg)
        if cfg.prediction_type == "flow_prediction" and not cfg.get("use_flow_sigmas", False):
            raise ValueError("prediction_type='flow_prediction' needs use_flow_sigmas=True")
        # float32 like the table models were trained with (zero terminal SNR floored to a finite largest sigma);
        # grids computed from it match Diffusers' to the bit
        ab = self.schedule.floored_alphas_cumprod(torch.float32)
        self.alpha_t, self.sigma_t = ab.sqrt(), (1 - ab).sqrt()
        self.lambda_t = self.alpha_t.log() - self.sigma_t.log()
        self._train_sigmas = self.schedule.sigmas(torch.float32).numpy()
        T = len(self._train_sigmas)
        # before set_timesteps: every training timestep, noisiest first, with its own sigma (add_noise for training)
        self._set_grid(np.arange(T - 1, -1, -1, dtype=np.float64), np.append(self._train_sigmas[::-1], 0.0), None)
        self.num_inference_steps = None

    # ---- grid -----------------------------------------------------------------------------------------------
    def _set_grid(self, timesteps: np.ndarray, sigmas: np.ndarray, device: Any) -> None:
        ts = np.asarray(timesteps, dtype=np.float64)
        integral = bool(np.all(ts == np.round(ts)))  # custom sigmas give fractional timesteps: kept as float32
        self.timesteps = torch.from_numpy(ts.astype(np.int64) if integral else ts.astype(np.float32)).to(device)
        self.sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32))
        flow = self.config.get("use_flow_sigmas", False)
        self._levels = [M.alpha_sigma(s, flow) for s in self.sigmas.tolist()]
        self._reset_steps()
        self.model_outputs: list = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        mu: float | None = None,
        timesteps: Any = None,
        sigmas: Any = None,
    ) -> None:
        """Choose the grid: ``num_inference_steps``, custom ``timesteps`` (descending ints) or custom ``sigmas``
        (descending noise levels ending with the final one, e.g. ``core.grids.named_sigmas`` + ``[0]``)."""
        ts, sig = multistep_schedule(
            self._train_sigmas, self.config, num_inference_steps, timesteps, sigmas, self._style, mu
        )
        self._set_grid(ts, sig, device)
        self.num_inference_steps = len(ts)

    # ---- model output -> x0 (data form) or eps (noise form) ------------------------------------------------
    def _output_form(self) -> str:
        return self._form

    def _as_x0(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output as a (thresholded, if configured) x0 estimate at the current step."""
        if self.config.get("variance_type") in ("learned", "learned_range"):
            model_output = model_output[:, : sample.shape[1]]  # drop the predicted variance channels
        P.check_same_shape(model_output, sample)
        alpha, sigma = self._levels[self.step_index]
        kind = self.config.prediction_type
        if kind == "epsilon":  # no floor on alpha here: these grids never reach alpha = 0
            x0 = (sample - sigma * model_output) / alpha
        else:
            x0 = P.to_x0_eps(model_output, sample, alpha, sigma, "flow" if kind == "flow_prediction" else kind)[0]
        return P.process_x0(x0, self.config)

    def convert_model_output(self, model_output: torch.Tensor, *args: Any, sample: torch.Tensor = None, **kw: Any):
        """The model output as an ``x0`` estimate (data form, thresholded if configured) or an ``eps`` estimate."""
        sample = args[-1] if sample is None and args else sample
        if self._output_form() == "data":
            return self._as_x0(model_output, sample)
        alpha, sigma = self._levels[self.step_index]
        kind = self.config.prediction_type
        if self.config.get("variance_type") in ("learned", "learned_range"):
            model_output = model_output[:, : sample.shape[1]]
        if self.config.thresholding or kind not in ("epsilon", "v_prediction"):
            return (sample - alpha * self._as_x0(model_output, sample)) / sigma
        return model_output if kind == "epsilon" else alpha * model_output + sigma * sample

    def _remember(self, output: torch.Tensor) -> None:
        self.model_outputs = self.model_outputs[1:] + [output]

    def _history(self, k: int) -> tuple[list, list]:
        """Levels and outputs of the ``k`` newest model outputs, newest first."""
        i = self.step_index
        return [self._levels[i - j] for j in range(k)], [self.model_outputs[-1 - j] for j in range(k)]

    def _step_noise(self, model_output: torch.Tensor, generator: Any, variance_noise: Any) -> torch.Tensor:
        if variance_noise is not None:
            if tuple(variance_noise.shape) != tuple(model_output.shape):
                raise ValueError(f"variance_noise shape {tuple(variance_noise.shape)} must equal the sample's")
            return variance_noise.to(device=model_output.device, dtype=torch.float32)
        return noise_like(model_output, generator, torch.float32)

    def _begin(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> int:
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        for name, v in (("model_output", model_output), ("sample", sample)):
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
        return self._index_for_step(timestep)

    # ---- forward process ----------------------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """These schedulers feed the sample to the model unscaled."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """``alpha x0 + sigma eps`` at the noise level of each sample's timestep (looked up in ``timesteps``;
        before ``set_timesteps`` every training timestep is there with its training noise level)."""
        check_noise(noise, original_samples)
        idx = self._indices_for(timesteps, original_samples.shape[0])
        a = torch.tensor([self._levels[i][0] for i in idx], dtype=torch.float64)
        s = torch.tensor([self._levels[i][1] for i in idx], dtype=torch.float64)
        return P.add_noise(original_samples, noise, a, s)
