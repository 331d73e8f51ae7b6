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


def test_yardstick_scores_real_digits_high_and_noise_low(yardstick):
    assert yardstick.test_accuracy > 0.95
    real = yardstick.real_images[:300]
    good = yardstick.score(real, labels=yardstick.real_labels[:300])
    assert good["confidence"] > 0.9 and good["class_coverage"] == 1.0 and good["label_accuracy"] > 0.95
    noise = yardstick.score(torch.rand(300, 1, 16, 16) * 2 - 1)
    assert noise["frechet_distance"] > 5 * good["frechet_distance"]
    assert noise["class_coverage"] < 1.0 or noise["confidence"] < good["confidence"]
    # other sizes, RGB and [0, 1] ranges are accepted
    up = torch.nn.functional.interpolate(real[:50], size=32).expand(-1, 3, -1, -1)
    assert yardstick.score((up + 1) / 2, value_range=(0, 1))["confidence"] > 0.8
    with pytest.raises(ValueError, match="images"):
        yardstick.score(torch.zeros(4, 2, 16, 16))
