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


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
@pytest.mark.parametrize("beta_schedule", ["linear", "cosine", "sigmoid"])
def test_loss_backward_and_sample(objective, beta_schedule):
    diffusion = _diffusion(objective=objective, beta_schedule=beta_schedule, min_snr_loss_weight=True)
    loss = diffusion(torch.rand(3, 1, 8, 8))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert diffusion.model.conv_in.weight.grad is not None
    images = diffusion.sample(batch_size=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_ddim_sampling_steps():
    diffusion = _diffusion(sampling_timesteps=4)
    assert diffusion.sample(batch_size=1).shape == (1, 1, 8, 8)


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
    assert isinstance(DiffusionPipeline.from_pretrained(str(tmp_path)), DDPMPipeline)
    assert trainer.ema_model.sample(batch_size=1).shape == (1, 1, 8, 8)
    assert trainer.ema_model.model is not diffusion.model


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
