"""The loss plot (matplotlib) and the grid helpers a run writes."""

import math

import pytest
import torch
from PIL import Image

from torchdiffusion.pipelines.generate import generate_images
from torchdiffusion.training.outputs import build_pipeline, ema_model
from torchdiffusion.training.report import save_loss_plot, smooth

from .common import tiny_scheduler, tiny_unet


def test_smooth_is_a_centred_geometric_mean():
    assert smooth([2.0, 8.0, 2.0], window=3) == pytest.approx([4.0, 32 ** (1 / 3), 4.0])
    falling = [math.exp(-i / 10) for i in range(100)]
    trend = smooth(falling, window=11)
    assert trend[50] == pytest.approx(falling[50])  # a centred window does not lag a falling curve
    assert smooth([0.3], window=5) == pytest.approx([0.3])


@pytest.mark.parametrize("losses", [[1.0 / (i + 1) + 0.01 for i in range(300)], [0.5], [], [0.2, float("nan"), 0.1]])
def test_save_loss_plot_writes_a_png(tmp_path, losses):
    path = tmp_path / "loss.png"
    save_loss_plot(losses, str(path), title="training loss (300 steps)")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 600 and image.height >= 300
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]  # no temporary file left behind


def test_generate_images_cycles_classes_and_seeds_each_image():
    torch.manual_seed(0)
    unet = tiny_unet(num_class_embeds=4)
    pipe = build_pipeline(ema_model(unet), tiny_scheduler(), class_conditional=True, null_class_label=3)
    images, cols = generate_images(pipe, 6, 2, seed=5, guidance_scale=2.0)
    assert images.shape == (6, 1, 8, 8) and cols == 3 and images.min() >= -1 and images.max() <= 1
    again, _ = generate_images(pipe, 6, 2, seed=5, guidance_scale=2.0)
    torch.testing.assert_close(images, again, atol=0, rtol=0)
    # image i depends on seed + i and its class only: image 3 (class 0, seed 8) is image 0 of a run at seed 8
    shifted, _ = generate_images(pipe, 1, 2, seed=8, guidance_scale=2.0)
    torch.testing.assert_close(images[3:4], shifted, atol=1e-5, rtol=0)  # batch of 6 vs 1: float rounding only
    ones, cols = generate_images(pipe, 2, 2, class_label="1")
    assert ones.shape[0] == 2 and cols is None


def test_generate_images_refuses_a_class_for_an_unconditional_pipeline():
    pipe = build_pipeline(tiny_unet(), tiny_scheduler())
    with pytest.raises(ValueError, match="class_label"):
        generate_images(pipe, 1, 2, class_label=3)


def test_write_log_without_matplotlib_warns_and_keeps_the_json(tmp_path, monkeypatch):
    import builtins
    import json

    from torchdiffusion.training import TrainingConfig
    from torchdiffusion.training.outputs import write_log

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.warns(UserWarning, match="matplotlib"):
        write_log(str(tmp_path), [0.5, 0.4], [{"step": 2}], 0.0, 2, 1, TrainingConfig())
    assert not (tmp_path / "loss.png").exists()
    assert json.loads((tmp_path / "train_log.json").read_text())["step"] == 2
