import json
import threading

import numpy as np
import pytest
import torch

from torchdiffusion import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel


def tiny_unet(seed: int = 0, channels: int = 3, size: int = 8) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).eval()


@pytest.fixture
def pipe():
    p = DDPMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=50))
    p.set_progress_bar_config(disable=True)
    return p


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_output_types(pipe):
    pil = pipe(batch_size=2, num_inference_steps=3, generator=gen(0)).images
    assert len(pil) == 2 and pil[0].size == (8, 8)
    arr = pipe(batch_size=2, num_inference_steps=3, generator=gen(0), output_type="np").images
    assert arr.shape == (2, 8, 8, 3) and arr.min() >= 0 and arr.max() <= 1
    pt = pipe(batch_size=2, num_inference_steps=3, generator=gen(0), output_type="pt", return_dict=False)[0]
    assert pt.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)
    assert np.array_equal(np.asarray(pil[0]), (arr[0] * 255).round().astype(np.uint8))


@pytest.mark.parametrize("cls", [DDPMPipeline, DDIMPipeline])
def test_same_seed_same_image_alone_or_in_batch(cls):
    p = cls(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=50))
    p.set_progress_bar_config(disable=True)
    kwargs = {"eta": 1.0} if cls is DDIMPipeline else {}
    batch = p(batch_size=3, num_inference_steps=4, generator=[gen(s) for s in (5, 6, 7)], output_type="np",
              **kwargs).images
    alone = p(batch_size=1, num_inference_steps=4, generator=[gen(6)], output_type="np", **kwargs).images
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)


def test_reproducible_and_pipeline_scheduler_untouched(pipe):
    before = pipe.scheduler.config
    a = pipe(batch_size=1, num_inference_steps=3, generator=gen(1), output_type="np").images
    b = pipe(batch_size=1, num_inference_steps=3, generator=gen(1), output_type="np").images
    assert np.array_equal(a, b) and pipe.scheduler.config == before


def test_two_threads_match_sequential(pipe):
    expected = [pipe(num_inference_steps=5, generator=gen(s), output_type="np").images for s in (1, 2)]
    results = {}

    def run(seed):
        results[seed] = pipe(num_inference_steps=5, generator=gen(seed), output_type="np").images

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(results[1], expected[0])
    np.testing.assert_array_equal(results[2], expected[1])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, "generator"),
    ],
)
def test_bad_arguments(pipe, kwargs, name):
    with pytest.raises(ValueError, match=name):
        pipe(**kwargs)


def test_bad_argument_types(pipe):
    with pytest.raises(TypeError, match="batch_size"):
        pipe(batch_size=1.5)
    with pytest.raises(TypeError, match="generator"):
        pipe(generator=3)


def test_ddim_eta_checked():
    p = DDIMPipeline(unet=tiny_unet(), scheduler=DDPMScheduler(num_train_timesteps=50))
    assert isinstance(p.scheduler, DDIMScheduler)
    with pytest.raises(ValueError, match="eta"):
        p(eta=-1.0)
    with pytest.raises(ValueError, match="eta"):
        p(eta=float("nan"))


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "scheduler" / "scheduler_config.json").is_file()
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is DDPMPipeline
    loaded.set_progress_bar_config(disable=True)
    a = pipe(num_inference_steps=3, generator=gen(0), output_type="np").images
    b = loaded(num_inference_steps=3, generator=gen(0), output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_component_override_dtype_and_repr(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    ddim = DDIMScheduler(num_train_timesteps=50)
    loaded = DDPMPipeline.from_pretrained(tmp_path, scheduler=ddim, torch_dtype=torch.float64)
    assert loaded.scheduler is ddim and loaded.dtype == torch.float64 and loaded.unet.dtype == torch.float64
    assert json.loads(loaded.scheduler.to_json_string())["_class_name"] == "DDIMScheduler"
    assert set(loaded.components) == {"unet", "scheduler"}
    text = repr(loaded)
    assert "UNet2DModel" in text and "DDIMScheduler" in text
    loaded.to(torch.float32)
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    with pytest.warns(UserWarning, match="noise_scheduler"):
        DDPMPipeline.from_pretrained(tmp_path, noise_scheduler=ddim)
    with pytest.raises(TypeError, match="to"):
        loaded.to(3)


def _write_index(path, **entries):
    data = {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1"}
    data.update(entries)
    (path / "model_index.json").write_text(json.dumps(data))


@pytest.mark.parametrize(
    "entries, match",
    [
        ({"unet": ["os", "system"], "scheduler": ["diffusers", "DDPMScheduler"]}, "not allowed|only torchdiffusion"),
        ({"unet": ["diffusers", "eval"], "scheduler": ["diffusers", "DDPMScheduler"]}, "not allowed"),
        ({"unet": ["transformers", "AutoModel"], "scheduler": ["diffusers", "DDPMScheduler"]}, "only torchdiffusion"),
        ({"unet": "UNet2DModel", "scheduler": ["diffusers", "DDPMScheduler"]}, "library, class_name"),
        ({"scheduler": ["diffusers", "DDPMScheduler"]}, "unet"),
    ],
)
def test_hostile_model_index(pipe, tmp_path, entries, match):
    pipe.save_pretrained(tmp_path)
    _write_index(tmp_path, **entries)
    with pytest.raises(ValueError, match=match):
        DDPMPipeline.from_pretrained(tmp_path)


def test_hostile_pipeline_class(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "model_index.json").read_text())
    data["_class_name"] = "subprocess.Popen"
    (tmp_path / "model_index.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="subprocess.Popen"):
        DiffusionPipeline.from_pretrained(tmp_path)
