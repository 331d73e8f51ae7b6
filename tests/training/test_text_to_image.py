"""Text-to-image fine-tuning on the shared Trainer: full (EMA) and LoRA runs on a tiny SD folder, the latent cache,
text-encoder LoRA, bit-exact resume, the CLI end to end (train, then generate with the LoRA), and the bad inputs."""

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.training.t2i_common import T2I_FAST
from torchdiffusion.training import Trainer, TrainingConfig
from torchdiffusion.training.latent_cache import LatentCache
from torchdiffusion.training.sources import load_captioned_dataset

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def data(captions_dir):
    return load_captioned_dataset(captions_dir, 64)


def _task(sd, **kwargs):
    from torchdiffusion.training.text_to_image import TextToImageTask

    return TextToImageTask(sd, **kwargs)


def _run(sd, data, out, task_kwargs=None, **options):
    trainer = Trainer(_task(sd, **(task_kwargs or {})), dataset=data, output_dir=str(out), **{**T2I_FAST, **options})
    return trainer, trainer.train()


def test_lora_run_writes_diffusers_lora_file_card_and_grid(tiny_sd_dir, data, tmp_path):
    trainer, result = _run(tiny_sd_dir, data, tmp_path, {"lora_rank": 4})
    assert isinstance(trainer.train_data, LatentCache)  # frozen encoders + no augmentation: cached by default
    assert trainer.ema is None and len(result.losses) == 3 and all(v > 0 for v in result.losses)
    weights = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert weights and all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in weights)
    assert any(k.endswith("attn2.to_out.0.lora.up.weight") for k in weights)
    card = (tmp_path / "README.md").read_text()
    assert tiny_sd_dir in card and "LoRA (rank 4" in card and "a red cat" in card and "samples.png" in card
    assert (tmp_path / "samples.png").exists() and (tmp_path / "loss.png").exists()
    assert not (tmp_path / "unet").exists()
    state = load_file(tmp_path / "checkpoints" / "checkpoint-000003" / "model.safetensors")
    assert state and all("lora_" in k for k in state)  # checkpoints hold the adapters only


def test_full_run_writes_a_pipeline_folder_that_loads(tiny_sd_dir, data, tmp_path):
    from torchdiffusion import DiffusionPipeline

    trainer, _ = _run(tiny_sd_dir, data, tmp_path)
    assert trainer.ema is not None
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path))
    assert type(pipe).__name__ == "StableDiffusionPipeline" and (tmp_path / "README.md").exists()
    trained = pipe.unet.state_dict()
    base = DiffusionPipeline.from_pretrained(tiny_sd_dir).unet.state_dict()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    ema = dict(zip([n for n, _ in trainer.unwrapped.named_parameters()], trainer.ema.shadow_params))
    assert torch.equal(trained["conv_in.weight"], ema["unet.conv_in.weight"])  # the EMA weights are exported


def test_cached_and_uncached_runs_agree(tiny_sd_dir, data, tmp_path):
    options = {"max_steps": 3, "num_validation_images": 0, "caption_dropout_prob": 0.5, "seed": 4}
    cached, a = _run(tiny_sd_dir, data, tmp_path / "a", {"lora_rank": 4}, **options)
    plain, b = _run(tiny_sd_dir, data, tmp_path / "b", {"lora_rank": 4, "cache_latents": False}, **options)
    assert isinstance(cached.train_data, LatentCache) and not isinstance(plain.train_data, LatentCache)
    # the same latent draws, caption dropout and noise: only round-off (the VAE run on other batches), which
    # AdamW's normalised steps carry forward a little
    assert a.losses[0] == pytest.approx(b.losses[0], rel=1e-5)
    assert a.losses == pytest.approx(b.losses, rel=1e-3)
    wa, wb = (load_file(p / "pytorch_lora_weights.safetensors") for p in (tmp_path / "a", tmp_path / "b"))
    diff = torch.cat([(wa[k] - wb[k]).flatten() for k in wa]).norm() / torch.cat([wa[k].flatten() for k in wa]).norm()
    assert diff < 1e-3, diff



def test_latent_training_defaults_to_nchw_and_channels_last_gives_the_same_losses(tiny_sd_dir, data, tmp_path):
    options = {"max_steps": 2, "num_validation_images": 0, "seed": 5}
    nchw, a = _run(tiny_sd_dir, data, tmp_path / "a", {"lora_rank": 4}, **options)
    cl, b = _run(tiny_sd_dir, data, tmp_path / "b", {"lora_rank": 4}, channels_last=True, **options)
    assert nchw.config.channels_last is False and cl.config.channels_last is True
    assert a.losses == pytest.approx(b.losses, rel=1e-4)

def test_text_encoder_lora_trains_and_is_saved(tiny_sd_dir, data, tmp_path):
    trainer, result = _run(tiny_sd_dir, data, tmp_path, {"lora_rank": 2, "text_encoder_lora": True},
                           learning_rate=1e-2)  # fmt: skip
    assert not isinstance(trainer.train_data, LatentCache)  # the embeddings change: nothing cached
    weights = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    text = [k for k in weights if k.startswith("text_encoder.")]
    assert text and all(".lora_linear_layer.down." in k or ".lora_linear_layer.up." in k for k in text)  # Diffusers'
    assert any(weights[k].abs().max() > 0 for k in text if ".up." in k)  # lora_B started at 0 and moved


def test_resume_is_bit_exact(tiny_sd_dir, data, tmp_path):
    # a constant LR: the first run's shorter max_steps must not change its schedule
    options = {"max_steps": 4, "checkpointing_steps": 2, "num_validation_images": 0, "seed": 7,
               "lr_schedule": "constant"}  # fmt: skip
    _, straight = _run(tiny_sd_dir, data, tmp_path / "s", {"lora_rank": 4}, **options)
    _run(tiny_sd_dir, data, tmp_path / "r", {"lora_rank": 4}, **{**options, "max_steps": 2})
    _, resumed = _run(tiny_sd_dir, data, tmp_path / "r", {"lora_rank": 4}, **options, resume_from_checkpoint="latest")
    assert resumed.losses == straight.losses
    a, b = (load_file(p / "pytorch_lora_weights.safetensors") for p in (tmp_path / "s", tmp_path / "r"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_min_snr_v_prediction_and_noise_offset_run(tiny_sd_dir, data, tmp_path):
    trainer, result = _run(tiny_sd_dir, data, tmp_path, {"lora_rank": 2}, loss_weighting="min_snr",
                           prediction_type="v_prediction", noise_offset=0.1, gradient_accumulation_steps=2,
                           num_validation_images=0)  # fmt: skip
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert trainer.pipeline().scheduler.config.prediction_type == "v_prediction"


def test_cli_lora_run_then_generate_with_the_lora(tiny_sd_dir, captions_dir, tmp_path, capsys):
    from torchdiffusion.cli import main

    out = str(tmp_path / "lora")
    args = ["train", "--pretrained", tiny_sd_dir, "--dataset", captions_dir, "--caption-column", "text",
            "--lora-rank", "4", "--output-dir", out, "--steps", "2", "--batch-size", "2", "--sample-steps", "2",
            "--validation-prompt", "a red cat", "--validation-prompt", "the dog", "--num-validation-images", "1",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert os.path.exists(os.path.join(out, "pytorch_lora_weights.safetensors"))
    assert "the dog" in open(os.path.join(out, "README.md")).read()
    images = {}
    for name, extra in (("plain", []), ("lora", ["--lora", out, "--lora-scale", "0.8"])):
        png = str(tmp_path / f"{name}.png")
        assert main(["generate", tiny_sd_dir, "a red cat", "--steps", "2", "--out", png, *extra]) == 0
        from PIL import Image

        images[name] = np.asarray(Image.open(png))
    assert images["plain"].shape == images["lora"].shape
    err = capsys.readouterr().err
    assert "error" not in err


def test_cli_full_run_writes_a_folder_generate_reads(tiny_sd_dir, captions_dir, tmp_path):
    from torchdiffusion.cli import main

    out = str(tmp_path / "full")
    args = ["train", "--pretrained", tiny_sd_dir, "--dataset", captions_dir, "--output-dir", out, "--steps", "1",
            "--batch-size", "2", "--no-progress", "--no-cache-latents"]  # fmt: skip
    assert main(args) == 0
    assert main(["generate", out, "the cat", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").exists()


# ---- bad inputs ---------------------------------------------------------------------------------------------------
def test_task_arguments_are_checked(tiny_sd_dir):
    for kwargs, name in (
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_rank": 2.5}, "lora_rank"),
        ({"lora_rank": 2, "lora_alpha": -1}, "lora_alpha"),
        ({"text_encoder_lora": True}, "text_encoder_lora"),
        ({"cache_latents": "yes"}, "cache_latents"),
        ({"lora_rank": 2, "text_encoder_lora": True, "cache_latents": True}, "cache_latents"),
    ):
        with pytest.raises(ValueError, match=name):
            _task(tiny_sd_dir, **kwargs)
    from torchdiffusion import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_sd_dir)
    pipe.text_encoder = None
    with pytest.raises(ValueError, match="no text_encoder"):
        _task(pipe)


def test_data_problems_stop_the_run_before_a_step(tiny_sd_dir, captions_dir, tmp_path):
    from torchdiffusion.training.data import DigitsDataset

    with pytest.raises(ValueError, match="captions"):
        Trainer(_task(tiny_sd_dir), dataset=DigitsDataset(64, 3), output_dir=str(tmp_path), **T2I_FAST).train()
    with pytest.raises(ValueError, match="multiple of the VAE's downscale factor 8"):
        _run(tiny_sd_dir, load_captioned_dataset(captions_dir, 60), tmp_path / "b")
    flipped = load_captioned_dataset(captions_dir, 64, random_flip=True)
    with pytest.raises(ValueError, match="cache_latents=True"):
        _run(tiny_sd_dir, flipped, tmp_path / "c", {"cache_latents": True})
    assert not os.path.exists(tmp_path / "c" / "checkpoints")


def test_config_fields_are_checked():
    for field, value in (("caption_dropout_prob", 1.5), ("validation_prompts", "a cat"),
                         ("num_validation_images", -1), ("report_to", "mlflow")):  # fmt: skip
        with pytest.raises(ValueError, match=field):
            TrainingConfig(**{field: value})


def test_report_to_without_the_package_names_it(tiny_sd_dir, data, tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        _, result = _run(tiny_sd_dir, data, tmp_path, {"lora_rank": 2}, report_to="tensorboard", max_steps=1)
        assert result.step == 1 and any("events" in f for _, _, fs in os.walk(tmp_path) for f in fs)
        return
    with pytest.raises(ImportError, match="report_to='tensorboard' needs the tensorboard package"):
        _run(tiny_sd_dir, data, tmp_path, {"lora_rank": 2}, report_to="tensorboard")


def test_cli_bad_combinations_name_the_argument(tiny_sd_dir, captions_dir, tmp_path, capsys):
    from torchdiffusion.cli import main

    assert main(["train", "--output-dir", str(tmp_path / "a"), "--lora-rank", "4"]) == 2
    assert "--lora-rank" in capsys.readouterr().err
    assert main(["train", "--pretrained", tiny_sd_dir, "--output-dir", str(tmp_path / "b")]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert main(["generate", tiny_sd_dir, "--out", str(tmp_path / "x.png")]) == 2
    assert "prompt" in capsys.readouterr().err


def test_pretrained_by_hub_id_from_the_cache_offline(tiny_sd_dir, data, tmp_path, monkeypatch):
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someone--tiny-sd"
    shutil.copytree(tiny_sd_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = {"cache_dir": str(tmp_path / "cache"), "local_files_only": True}
    task = _task("someone/tiny-sd", lora_rank=2, load_kwargs=cache)
    Trainer(task, dataset=data, output_dir=str(tmp_path / "out"), **{**T2I_FAST, "max_steps": 1}).train()
    assert "base_model: someone/tiny-sd" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.filterwarnings("ignore:mixed_precision='bf16' on a CPU")
def test_bf16_and_gradient_checkpointing_run(tiny_sd_dir, data, tmp_path):
    _, result = _run(tiny_sd_dir, data, tmp_path, {"lora_rank": 2}, mixed_precision="bf16",
                     gradient_checkpointing=True, max_steps=2, num_validation_images=0)  # fmt: skip
    assert result.step == 2 and all(torch.isfinite(torch.tensor(result.losses)))


def test_push_to_hub_uploads_the_lora_file_card_and_grid(tiny_sd_dir, data, tmp_path, monkeypatch):
    import huggingface_hub

    uploads = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def file_exists(self, *args, **kwargs):
            return False

        def upload_folder(self, repo_id, folder_path, **kwargs):
            with open(os.path.join(folder_path, "README.md")) as f:
                uploads.append((repo_id, sorted(os.listdir(folder_path)), f.read()))
            return "https://huggingface.co/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    _run(tiny_sd_dir, data, tmp_path / "my-lora", {"lora_rank": 2}, push_to_hub=True, max_steps=1, sample_steps=1)
    ((repo, files, card),) = uploads
    assert repo == "my-lora" and files == ["README.md", "pytorch_lora_weights.safetensors", "samples.png"]
    assert "![validation grid](samples.png)" in card


def test_grids_reach_the_trackers():
    from torchdiffusion.training.outputs import log_grid

    seen = []

    class Writer:
        def add_images(self, name, array, step, dataformats):
            seen.append((name, array.shape, array.dtype, step, dataformats))

    tracker = type("Tracker", (), {"name": "tensorboard", "writer": Writer()})()
    log_grid(type("Acc", (), {"trackers": [tracker]})(), torch.zeros(2, 3, 8, 8), 5)
    assert seen == [("validation", (2, 8, 8, 3), np.uint8, 5, "NHWC")]
