import subprocess
import sys

import torchdiffusion


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_import_is_light():
    out = _run(
        "import sys, torchdiffusion; heavy = [m for m in ('transformers', 'accelerate', 'diffusers', "
        "'torchdiffusion.models.unet_2d', 'huggingface_hub', 'safetensors', 'peft') if m in sys.modules]; print(heavy)"
    )
    assert out == "[]"


def test_training_and_cli_import_no_plotting_or_pipelines():
    """matplotlib (the loss plot) loads when a plot is drawn; the pipelines when a sample grid is drawn."""
    out = _run(
        "import sys, torchdiffusion.training, torchdiffusion.cli; heavy = [m for m in ('matplotlib', 'accelerate', "
        "'torchdiffusion.pipelines.pipeline', 'huggingface_hub') if m in sys.modules]; print(heavy)"
    )
    assert out == "[]"


def test_public_names_resolve():
    for name in torchdiffusion.__all__:
        assert getattr(torchdiffusion, name) is not None, name
    assert "UNet2DModel" in dir(torchdiffusion)


def test_unknown_name():
    import pytest

    with pytest.raises(AttributeError, match="NotAThing"):
        torchdiffusion.NotAThing  # noqa: B018
