import os

import pytest
import torch

from torchdiffusion import DDPMPipeline, DiffusionPipeline
from torchdiffusion.simple import GaussianDiffusion, Trainer, Unet


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _diffusion(**kwargs):
    torch.manual_seed(0)
    model = Unet(dim=8, dim_mults=(1, 2), channels=1)
    return GaussianDiffusion(model, image_size=8, timesteps=20, **kwargs)


def _reference_betas(beta_schedule: str, timesteps: int) -> torch.Tensor:
    """denoising_diffusion_pytorch's beta schedules, written out here independently (float64)."""
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    if beta_schedule == "linear":
        scale = 1000 / timesteps
        return torch.linspace(1e-4 * scale, min(0.02 * scale, 0.999), timesteps, dtype=torch.float64)
    if beta_schedule == "cosine":  # improved DDPM, s = 0.008
        ab = torch.cos((t + 0.008) / 1.008 * torch.pi / 2) ** 2
    else:  # sigmoid, start -3, end 3, tau 1
        v_start, v_end = torch.sigmoid(torch.tensor(-3.0, dtype=torch.float64)), torch.sigmoid(torch.tensor(3.0))
        ab = (-torch.sigmoid(t * 6 - 3) + v_end) / (v_end - v_start)
    return (1 - ab[1:] / ab[:-1]).clamp(0, 0.999)


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine", "sigmoid"])
def test_loss_backward_and_sample(objective, beta_schedule):
    diffusion = _diffusion(objective=objective, beta_schedule=beta_schedule, min_snr_loss_weight=True)
    assert diffusion.prediction_type == {"pred_noise": "epsilon", "pred_x0": "sample", "pred_v": "v_prediction"}[
        objective
    ]
    assert diffusion.noise_scheduler.config.prediction_type == diffusion.prediction_type
    torch.testing.assert_close(
        diffusion.noise_scheduler.betas.double(), _reference_betas(beta_schedule, 20), atol=1e-6, rtol=1e-5
    )
    loss = diffusion(torch.rand(3, 1, 8, 8))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert diffusion.model.conv_in.weight.grad.abs().sum() > 0
    images = diffusion.sample(batch_size=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    # `sample` is DDPM over all steps with the diffusion's own scheduler, mapped to [0, 1]
    pipe = DDPMPipeline(unet=diffusion.model.eval(), scheduler=diffusion.noise_scheduler)
    pipe.set_progress_bar_config(disable=True)
    want = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=20, output_type="pt")
    want = want.images
    torch.testing.assert_close(images, want)
    assert images.std() > 0.01 and not torch.equal(images[0], images[1])


def test_ddim_sampling_steps():
    diffusion = _diffusion(sampling_timesteps=4)
    calls = []
    diffusion.model.register_forward_hook(lambda *args: calls.append(1))
    images = diffusion.sample(batch_size=1, generator=torch.Generator().manual_seed(1))
    assert images.shape == (1, 1, 8, 8) and len(calls) == 4  # DDIM: one model call per sampling step
    again = diffusion.sample(batch_size=1, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(images, again)  # eta = 0: the same start noise gives the same image


def test_trainer_on_digits_writes_a_pipeline(tmp_path):
    diffusion = _diffusion(objective="pred_noise")
    trainer = Trainer(
        diffusion,
        "digits",
        train_batch_size=4,
        train_num_steps=3,
        save_and_sample_every=2,
        num_samples=4,
        results_folder=str(tmp_path),
        calculate_fid=False,
        gradient_accumulate_every=1,
        amp=False,
    )
    trainer.train()
    assert {"model_index.json", "samples.png", "loss.png"} <= set(os.listdir(tmp_path))
    saved = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert isinstance(saved, DDPMPipeline)
    assert trainer.ema_model.sample(batch_size=1).shape == (1, 1, 8, 8)
    assert trainer.ema_model.model is not diffusion.model
    # the folder holds the EMA weights, which differ from the trained (online) weights
    ema, online = trainer.ema_model.model.state_dict(), diffusion.model.state_dict()
    for name, value in saved.unet.state_dict().items():
        torch.testing.assert_close(value, ema[name], msg=name)
    assert any(not torch.equal(ema[k], online[k]) for k in ema)


def test_trainer_on_a_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (10, 12), (40 * i, 80, 120)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(Unet(dim=8, dim_mults=(1, 2)), image_size=8, timesteps=10)
    Trainer(
        diffusion,
        str(folder),
        train_batch_size=2,
        train_num_steps=2,
        save_and_sample_every=10,
        num_samples=1,
        results_folder=str(tmp_path / "out"),
        calculate_fid=False,
    ).train()
    assert os.path.exists(tmp_path / "out" / "model_index.json")


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: Unet(dim=0), "dim"),
        (lambda: Unet(dim=8, dim_mults=()), "dim_mults"),
        (lambda: GaussianDiffusion(Unet(dim=8, dim_mults=(1,)), image_size=8, objective="pred_eps"), "objective"),
        (lambda: GaussianDiffusion(Unet(dim=8, dim_mults=(1,)), image_size=8, beta_schedule="quad"), "beta_schedule"),
        (lambda: GaussianDiffusion(Unet(dim=8, dim_mults=(1,)), image_size=0), "image_size"),
        (lambda: _diffusion()(torch.rand(2, 3, 8, 8)), "img"),
        (lambda: Trainer(_diffusion(), "digits", ema_update_every=0), "ema_update_every"),
    ],
)
def test_bad_arguments(build, name):
    with pytest.raises(ValueError, match=name):
        build()
