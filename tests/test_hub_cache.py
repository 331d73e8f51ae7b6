"""Hub ids resolve through huggingface_hub's cache: no network, only the files a loader needs."""

import shutil

import numpy as np
import pytest
import torch

from torchdiffusion import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _make_cache(tmp_path, repo_id="someone/tiny-ddpm"):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=20))
    src = tmp_path / "src"
    pipe.save_pretrained(src)
    repo = tmp_path / "cache" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(src, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return pipe, tmp_path / "cache"


def test_hub_id_from_cache_offline(tmp_path, monkeypatch):
    pipe, cache = _make_cache(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = DiffusionPipeline.from_pretrained("someone/tiny-ddpm", cache_dir=str(cache))
    assert type(loaded) is DDPMPipeline
    for p in (pipe, loaded):
        p.set_progress_bar_config(disable=True)
    a = pipe(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    b = loaded(num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-6)
    unet = UNet2DModel.from_pretrained("someone/tiny-ddpm", subfolder="unet", cache_dir=str(cache),
                                       local_files_only=True)
    assert unet.config.sample_size == 8


def test_hub_id_missing_file_in_cache_is_clear(tmp_path):
    _, cache = _make_cache(tmp_path)
    with pytest.raises(FileNotFoundError, match="variant|weights"):
        UNet2DModel.from_pretrained("someone/tiny-ddpm", subfolder="unet", cache_dir=str(cache),
                                    local_files_only=True, variant="fp16")
    with pytest.raises((OSError, FileNotFoundError), match="model_index.json"):
        DiffusionPipeline.from_pretrained("someone/not-there", cache_dir=str(cache), local_files_only=True)
