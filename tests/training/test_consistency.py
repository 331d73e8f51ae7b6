"""Latent consistency distillation into a LoRA (LCM-LoRA) on a tiny SD folder: the boundary condition, the solver
grid, the teacher's guided DDIM step and the loss against hand-written formulas, the teacher staying the frozen
base, the saved file loading here and in Diffusers with the same images, bit-exact resume, the bad inputs and the
``distill-lcm`` command end to end (then ``generate --scheduler lcm`` with the LoRA)."""

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.training.t2i_common import T2I_FAST
from torchdiffusion.training import Trainer
from torchdiffusion.training.sources import load_captioned_dataset

pytest.importorskip("peft")

FAST = {**T2I_FAST, "sample_guidance_scale": 1.0, "sample_inference_steps": 2, "lr_schedule": "constant"}


@pytest.fixture(scope="module")
def data(captions_dir):
    return load_captioned_dataset(captions_dir, 64)


def _task(sd, **kwargs):
    from torchdiffusion.training.consistency import LatentConsistencyTask

    return LatentConsistencyTask(sd, **{"lora_rank": 4, **kwargs})


def _trainer(sd, data, out, task_kwargs=None, **options):
    return Trainer(_task(sd, **(task_kwargs or {})), dataset=data, output_dir=str(out), **{**FAST, **options})


def _randomise_lora(unet, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


# ---- the formulas -------------------------------------------------------------------------------------------------
def test_boundary_condition_and_the_schedulers_scalings():
    from torchdiffusion import LCMScheduler
    from torchdiffusion.training.consistency import boundary_scalings

    t = torch.tensor([0, 1, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t)
    assert c_skip[0] == 1 and c_out[0] == 0  # f(x, 0) = x exactly
    assert c_skip[-1] < 1e-6 and c_out[-1] == pytest.approx(1, abs=1e-6)  # far from 0: the x0 estimate alone
    sched = LCMScheduler()
    for i, step in enumerate(t.tolist()):
        a, b = sched.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(a, rel=1e-6) and c_out[i].item() == pytest.approx(b, rel=1e-6)
    c_skip, c_out = boundary_scalings(torch.tensor([1]), timestep_scaling=1.0)
    assert c_skip.item() == pytest.approx(0.25 / 1.25) and c_out.item() == pytest.approx(1 / 1.25**0.5)


def test_solver_grid_is_the_lcm_schedulers_and_pseudo_huber():
    from torchdiffusion import LCMScheduler
    from torchdiffusion.training.consistency import pseudo_huber, solver_timesteps

    grid = solver_timesteps(1000, 50)
    assert grid.tolist() == list(range(19, 1000, 20))
    sched = LCMScheduler(original_inference_steps=50)
    sched.set_timesteps(50)
    assert sorted(sched.timesteps.tolist()) == grid.tolist()
    a, b = torch.tensor([0.0, 1.0, -2.0]), torch.zeros(3)
    expect = ((0.001**2) ** 0.5 - 0.001 + (1 + 1e-6) ** 0.5 - 0.001 + (4 + 1e-6) ** 0.5 - 0.001) / 3
    assert pseudo_huber(a, b, 0.001).item() == pytest.approx(expect, rel=1e-6)


@pytest.fixture(scope="module")
def ready(tiny_sd_dir, data, tmp_path_factory):
    """A set-up trainer (nothing trained) whose adapters are randomised: the student differs from the teacher."""
    trainer = _trainer(tiny_sd_dir, data, tmp_path_factory.mktemp("ready"), seed=3, channels_last=False)
    trainer._setup()
    _randomise_lora(trainer.task.model.unet)
    return trainer


def _base_unet(folder):
    from torchdiffusion import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()


def test_teacher_step_is_guided_ddim_of_the_frozen_base(ready, tiny_sd_dir):
    task = ready.task
    base = _base_unet(tiny_sd_dir)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8, generator=g)
    t, s = torch.tensor([519, 19]), torch.tensor([499, 0])
    cond = torch.randn(2, 77, 32, generator=g)
    w = torch.tensor([3.0, 7.5])
    got = task.teacher_step(x_t, t, s, cond, w)
    # by hand, in float64 from the scheduler's alpha_bar table, with a UNet that never had adapters
    ab = torch.as_tensor(task.noise_scheduler.alphas_cumprod, dtype=torch.float64)
    uncond = task.encoders.embed([""]).expand(2, -1, -1)
    with torch.no_grad():
        e_u, e_c = (base(x_t, t, h).sample.double() for h in (uncond, cond))
    eps = e_u + w.double().view(2, 1, 1, 1) * (e_c - e_u)
    a_t, a_s = ab[t].view(2, 1, 1, 1), ab[s].view(2, 1, 1, 1)
    x0 = (x_t.double() - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    expect = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps
    assert (got.double() - expect).abs().max() < 1e-4
    with torch.no_grad():  # the adapters are back on afterwards, and trainable
        student = task.model.unet(x_t, t, cond).sample
        assert (student - base(x_t, t, cond).sample).abs().max() > 1e-3
    assert all(p.requires_grad for n, p in task.model.unet.named_parameters() if "lora_" in n)


def test_loss_is_the_consistency_objective_by_hand(ready):
    from torchdiffusion.training.data import collate

    task, cfg = ready.task, ready.config
    batch = collate([ready.train_data[k] for k in ready.plan.keys(0)])
    loss = task.loss(ready.wrapped, batch, 0, ready.accelerator, cfg)
    d = task.draws(cfg, 0, (2, 4, 8, 8), 0, 1)
    x0, kwargs = task.inputs(batch, torch.zeros(2, dtype=torch.bool), d["latent_noise"], torch.device("cpu"))
    cond = kwargs["encoder_hidden_states"]
    t = 20 * d["index"] + 19
    s = (t - 20).clamp(min=0)
    ab = torch.as_tensor(task.noise_scheduler.alphas_cumprod, dtype=torch.float64)

    def f(x, step):  # the consistency function of the student (adapters on), by hand
        with torch.no_grad():
            eps = task.model.unet(x.float(), step, cond).sample.double()
        a = ab[step].view(-1, 1, 1, 1)
        x0_hat = (x.double() - (1 - a).sqrt() * eps) / a.sqrt()
        scaled = 10.0 * step.double().view(-1, 1, 1, 1)
        return 0.25 / (scaled**2 + 0.25) * x.double() + scaled / (scaled**2 + 0.25).sqrt() * x0_hat

    x_t = ab[t].view(-1, 1, 1, 1).sqrt() * x0.double() + (1 - ab[t].view(-1, 1, 1, 1)).sqrt() * d["noise"].double()
    x_s = task.teacher_step(x_t.float(), t, s, cond, d["guidance"])
    diff = f(x_t, t) - f(x_s, s)
    expect = ((diff**2 + 1e-6).sqrt() - 1e-3).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-4)
    assert 3 <= d["guidance"].min() and d["guidance"].max() <= 12 and d["index"].max() < 50


def test_adapters_off_gives_the_base_unet_after_training(tiny_sd_dir, data, tmp_path):
    from torchdiffusion.training.consistency import adapters_off

    trainer = _trainer(tiny_sd_dir, data, tmp_path, learning_rate=1e-2, max_steps=3, num_validation_images=0)
    trainer.train()
    unet, base = trainer.task.model.unet.eval(), _base_unet(tiny_sd_dir)
    assert any(p.abs().max() > 0 for n, p in unet.named_parameters() if "lora_B" in n)  # the adapters trained
    x, t, h = torch.randn(1, 4, 8, 8), torch.tensor([400]), torch.randn(1, 77, 32)
    with torch.no_grad():
        with adapters_off(unet):
            teacher = unet(x, t, h).sample
        student, plain = unet(x, t, h).sample, base(x, t, h).sample
    assert torch.equal(teacher, plain) and not torch.allclose(student, plain)
    frozen = {k: v for k, v in unet.state_dict().items() if "lora_" not in k}
    base_state = base.state_dict()
    assert all(torch.equal(v, base_state[k.replace(".base_layer", "")]) for k, v in frozen.items())


def test_the_loss_falls_on_the_micro_batches_it_trained_on(tiny_sd_dir, data, tmp_path):
    from torchdiffusion.training.data import collate

    trainer = _trainer(tiny_sd_dir, data, tmp_path, learning_rate=3e-3, max_steps=6, num_validation_images=0)
    result = trainer.train()
    assert all(np.isfinite(result.losses)) and all(v > 0 for v in result.losses)
    task, unet = trainer.task, trainer.task.model.unet

    def losses():  # the same draws (seed, micro-step) and batches as in the run
        with torch.no_grad():
            return [task.loss(trainer.wrapped, collate([trainer.train_data[k] for k in trainer.plan.keys(i)]), i,
                              trainer.accelerator, trainer.config).item() for i in range(6)]  # fmt: skip

    after = losses()
    ups = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_B" in n}
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if n in ups:
                p.zero_()  # lora_B starts at 0: the student as it began (the base model)
    before = losses()
    assert sum(after) < sum(before), (before, after)


# ---- a run and what it writes -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def distilled(tiny_sd_dir, data, tmp_path_factory):
    from torchdiffusion.training.recipes import distill_lcm_lora

    out = str(tmp_path_factory.mktemp("lcm") / "out")
    options = {k: v for k, v in FAST.items() if k != "max_steps"}
    result = distill_lcm_lora(tiny_sd_dir, data, out, lora_rank=4, max_steps=8,
                              **{**options, "learning_rate": 1e-2, "sample_steps": 8})  # fmt: skip
    return out, result


def test_run_writes_lora_scheduler_card_and_the_loss_falls(distilled, tiny_sd_dir):
    out, result = distilled
    assert result.step == 8 and all(np.isfinite(result.losses)) and all(v > 0 for v in result.losses)
    weights = load_file(os.path.join(out, "pytorch_lora_weights.safetensors"))
    assert weights and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in weights)
    with safe_open(os.path.join(out, "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 4
    sched = json.load(open(os.path.join(out, "scheduler_config.json")))
    assert sched["_class_name"] == "LCMScheduler" and sched["original_inference_steps"] == 50
    card = open(os.path.join(out, "README.md")).read()
    assert "LCM-LoRA" in card and tiny_sd_dir in card and "U[3, 12]" in card and "samples.png" in card
    assert os.path.exists(os.path.join(out, "samples.png"))


def _lcm_pair(folder, lora):
    import diffusers

    import torchdiffusion as td

    theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder)
    ours = td.StableDiffusionPipeline.from_pretrained(folder)
    theirs.scheduler = diffusers.LCMScheduler.from_pretrained(lora)
    ours.scheduler = td.LCMScheduler.from_pretrained(lora)
    for pipe in (theirs, ours):
        pipe.set_progress_bar_config(disable=True)
    return theirs, ours


def _images(pipe, **kwargs):
    return pipe(["a red cat", "the dog"], num_inference_steps=4, guidance_scale=1.0, output_type="np",
                generator=[torch.Generator().manual_seed(i) for i in range(2)], **kwargs).images  # fmt: skip


def test_saved_lora_gives_the_same_images_here_and_in_diffusers(distilled, tiny_sd_dir):
    pytest.importorskip("diffusers")
    out, _ = distilled
    theirs, ours = _lcm_pair(tiny_sd_dir, out)
    plain = _images(ours)
    assert np.abs(_images(theirs) - plain).max() <= 2e-3  # LCMScheduler alone: the same
    theirs.load_lora_weights(out)
    ours.load_lora_weights(out)
    a, b = _images(theirs), _images(ours)
    assert np.abs(a - b).max() <= 2e-3
    assert np.abs(b - plain).max() > 1e-2  # the adapters change the images


def test_resume_is_bit_exact(tiny_sd_dir, data, tmp_path):
    options = {"max_steps": 4, "checkpointing_steps": 2, "num_validation_images": 0, "seed": 5}
    straight = _trainer(tiny_sd_dir, data, tmp_path / "s", **options).train()
    _trainer(tiny_sd_dir, data, tmp_path / "r", **{**options, "max_steps": 2}).train()
    resumed = _trainer(tiny_sd_dir, data, tmp_path / "r", **options, resume_from_checkpoint="latest").train()
    assert resumed.losses == straight.losses
    a, b = (load_file(p / "pytorch_lora_weights.safetensors") for p in (tmp_path / "s", tmp_path / "r"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_wide_targets_and_uncached_latents(tiny_sd_dir, data, tmp_path):
    from torchdiffusion.training.latent_cache import LatentCache

    trainer = _trainer(tiny_sd_dir, data, tmp_path, {"lora_targets": "all", "cache_latents": False, "lora_alpha": 8},
                       max_steps=2, num_validation_images=0, learning_rate=1e-2)  # fmt: skip
    result = trainer.train()
    assert not isinstance(trainer.train_data, LatentCache) and all(np.isfinite(result.losses))
    keys = load_file(tmp_path / "pytorch_lora_weights.safetensors").keys()
    assert any(".conv1.lora_A." in k for k in keys) and any("attn2.to_q.lora_A" in k for k in keys)
    pytest.importorskip("diffusers")
    theirs, ours = _lcm_pair(tiny_sd_dir, str(tmp_path))  # alpha 8 on rank 4 (the header's metadata), convs too
    plain = _images(ours)
    theirs.load_lora_weights(str(tmp_path))
    ours.load_lora_weights(str(tmp_path))
    a, b = _images(theirs), _images(ours)
    assert np.abs(a - b).max() <= 2e-3 and np.abs(b - plain).max() > 1e-3


# ---- bad inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_rank": -2}, "lora_rank"),
        ({"lora_rank": None}, "lora_rank"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"w_min": 8.0, "w_max": 4.0}, "w_min"),
        ({"w_min": 0.5}, "w_min"),
        ({"w_max": float("nan")}, "w_max"),
        ({"num_ddim_timesteps": 0}, "num_ddim_timesteps"),
        ({"num_ddim_timesteps": -50}, "num_ddim_timesteps"),
        ({"num_ddim_timesteps": 30}, "num_ddim_timesteps"),
        ({"num_ddim_timesteps": 2000}, "num_ddim_timesteps"),
        ({"num_ddim_timesteps": 50.0}, "num_ddim_timesteps"),
        ({"huber_c": 0}, "huber_c"),
        ({"timestep_scaling": -1}, "timestep_scaling"),
        ({"lora_targets": "convs"}, "lora_targets"),
        ({"lora_targets": []}, "lora_targets"),
    ],
)
def test_bad_arguments_name_themselves(tiny_sd_dir, kwargs, name):
    with pytest.raises(ValueError, match=name):
        _task(tiny_sd_dir, **kwargs)


def test_another_prediction_type_is_refused(tiny_sd_dir, data, tmp_path):
    with pytest.raises(ValueError, match="prediction_type"):
        _trainer(tiny_sd_dir, data, tmp_path, prediction_type="v_prediction").train()


# ---- the command --------------------------------------------------------------------------------------------------
def test_cli_distill_then_generate_with_lcm(tiny_sd_dir, captions_dir, tmp_path, capsys):
    from PIL import Image

    from torchdiffusion.cli import main

    out = str(tmp_path / "lcm")
    args = ["distill-lcm", "--pretrained", tiny_sd_dir, "--dataset", captions_dir, "--output-dir", out, "--steps", "2",
            "--batch-size", "2", "--lora-rank", "4", "--sample-steps", "2", "--validation-prompt", "a red cat",
            "--num-validation-images", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "LCM-LoRA weights" in capsys.readouterr().out
    assert os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors"))
    assert "a red cat" in open(os.path.join(out, "README.md")).read()
    png = str(tmp_path / "x.png")
    gen = ["generate", tiny_sd_dir, "a red cat", "--lora", out, "--scheduler", "lcm", "--steps", "4",
           "--guidance-scale", "1", "--out", png]  # fmt: skip
    assert main(gen) == 0 and np.asarray(Image.open(png)).size > 0
    assert "error" not in capsys.readouterr().err


def test_cli_bad_arguments_are_reported(tiny_sd_dir, tmp_path, capsys):
    from torchdiffusion.cli import main

    assert main(["distill-lcm", "--pretrained", tiny_sd_dir, "--output-dir", str(tmp_path / "a")]) == 2
    assert "--dataset" in capsys.readouterr().err
    bad = ["distill-lcm", "--pretrained", tiny_sd_dir, "--dataset", "x", "--output-dir", str(tmp_path / "b")]
    assert main([*bad, "--lora-rank", "0"]) == 2
    assert "lora_rank" in capsys.readouterr().err
    assert main([*bad, "--w-min", "9", "--w-max", "4"]) == 2
    assert "w_min" in capsys.readouterr().err
