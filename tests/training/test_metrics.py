import numpy as np
import pytest
import torch

from torchdiffusion.training.metrics import DigitsYardstick, frechet_distance, inception_features


def test_frechet_distance_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    b = rng.normal(size=(150, 5)) @ rng.normal(size=(5, 5)) + 1.0
    scipy_linalg = pytest.importorskip("scipy.linalg")
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * scipy_linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.tensor(a), torch.tensor(a)) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_bad_inputs():
    with pytest.raises(ValueError, match="features_a"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="feature sizes"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


def test_inception_fid_gives_a_clear_message_when_unavailable():
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="torch-fidelity"):
        inception_features(torch.rand(2, 3, 8, 8))


@pytest.fixture(scope="module")
def yardstick():
    return DigitsYardstick()


def _held_out(yardstick):
    """The 300 real digits the classifier never trained on, their labels, and features of the other (training)
    images as the Fréchet reference (so no scored image is part of the reference)."""
    test = yardstick.test_indices
    train = torch.ones(len(yardstick.real_images), dtype=torch.bool)
    train[test] = False
    reference = yardstick.features(yardstick.real_images[train])
    return yardstick.real_images[test], yardstick.real_labels[test], reference


def test_yardstick_scores_held_out_digits_high_and_noise_low(yardstick):
    assert yardstick.test_accuracy > 0.95
    held, labels, reference = _held_out(yardstick)
    assert len(held) == 300
    good = yardstick.score(held, labels=labels)
    assert good["confidence"] > 0.9 and good["class_coverage"] == 1.0 and good["label_accuracy"] > 0.95
    fd_held = frechet_distance(yardstick.features(held), reference)
    # held-out digits sit as close to the training digits as 300 training digits do (no memorisation bonus)
    in_training = torch.ones(len(yardstick.real_images), dtype=torch.bool)
    in_training[yardstick.test_indices] = False
    train_300 = yardstick.real_images[in_training][:300]
    assert fd_held < 1.5 * frechet_distance(yardstick.features(train_300), reference)
    noise = yardstick.score(torch.rand(300, 1, 16, 16) * 2 - 1)
    assert noise["frechet_distance"] > 5 * good["frechet_distance"]
    assert noise["class_coverage"] < 1.0 or noise["confidence"] < good["confidence"]
    # other sizes, RGB and [0, 1] ranges are accepted
    up = torch.nn.functional.interpolate(held[:50], size=32).expand(-1, 3, -1, -1)
    assert yardstick.score((up + 1) / 2, value_range=(0, 1))["confidence"] > 0.8
    with pytest.raises(ValueError, match="images"):
        yardstick.score(torch.zeros(4, 2, 16, 16))


def test_yardstick_scores_degraded_digits_worse(yardstick):
    """Blurred or noisy held-out digits: a clearly larger Fréchet distance (measured ~2.6x, ~2.9x) and lower
    confidence; shuffled labels: label accuracy at chance."""
    held, labels, reference = _held_out(yardstick)
    fd_held = frechet_distance(yardstick.features(held), reference)
    good = yardstick.score(held, labels=labels)
    blur = torch.nn.functional.avg_pool2d(held, 3, stride=1, padding=1, count_include_pad=False)
    noisy = (held + 0.5 * torch.randn(held.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    for degraded in (blur, noisy):
        assert frechet_distance(yardstick.features(degraded), reference) > 2 * fd_held
        assert yardstick.score(degraded)["confidence"] < good["confidence"]
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert yardstick.score(held, labels=shuffled)["label_accuracy"] < 0.2


def test_yardstick_improves_with_training(yardstick, tmp_path):
    """Samples of a tiny UNet after 100 training steps on digits score better than before training."""
    from tests.training.common import FAST, tiny_scheduler, tiny_unet
    from torchdiffusion import DDIMPipeline, DDIMScheduler
    from torchdiffusion.training import Trainer
    from torchdiffusion.training.data import DigitsDataset

    def sample(unet):
        pipe = DDIMPipeline(unet=unet.eval(), scheduler=DDIMScheduler.from_config(tiny_scheduler().config))
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(0)
        images = pipe(batch_size=100, num_inference_steps=10, generator=g, output_type="pt").images
        return yardstick.score(images, value_range=(0, 1))

    torch.manual_seed(0)
    unet = tiny_unet(16)
    before = sample(unet)
    options = dict(FAST, max_steps=100, batch_size=32, checkpointing_steps=10**6, sample_steps=10**6, log_steps=50)
    options["lr_warmup_steps"] = 10
    Trainer(unet, tiny_scheduler(), DigitsDataset(16), output_dir=str(tmp_path), **options).train()
    after = sample(unet)
    assert after["frechet_distance"] < 0.85 * before["frechet_distance"]  # measured 474 -> 338
    assert after["confidence"] > before["confidence"]
