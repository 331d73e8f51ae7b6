import json
import os

import pytest
import torch

from torchdiffusion import ClassConditionalPipeline, DDPMPipeline, DiffusionPipeline
from torchdiffusion.training import Trainer, TrainingConfig
from torchdiffusion.training.data import DigitsDataset

from .common import FAST, tiny_scheduler, tiny_unet


@pytest.fixture(scope="module")
def digits():
    return DigitsDataset(8)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_unconditional_run_writes_a_pipeline_folder(tmp_path, digits):
    out = str(tmp_path / "run")
    torch.manual_seed(0)
    model = tiny_unet()
    init = _weights(model)
    result = Trainer(model, tiny_scheduler(), digits, output_dir=out, **FAST).train()
    assert result.step == 4 and len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    assert 0.05 < result.losses[0] < 5  # the noise-prediction MSE of an untrained net: order 1
    assert any(not torch.equal(init[k], v) for k, v in model.state_dict().items())  # the steps moved the weights
    names = set(os.listdir(out))
    assert {
        "model_index.json",
        "unet",
        "scheduler",
        "loss.png",
        "samples.png",
        "train_log.json",
        "checkpoints",
    } <= names
    assert os.listdir(os.path.join(out, "samples")) == ["step_000004.png"]
    log = json.load(open(os.path.join(out, "train_log.json")))
    assert log["step"] == 4 and log["history"][-1]["step"] == 4 and "images_per_s" in log["history"][-1]
    # the log's loss is the mean over its last log_steps (2) steps, rounded to 5 places
    assert log["history"][-1]["loss"] == pytest.approx(sum(result.losses[-2:]) / 2, abs=1e-5)
    index = json.load(open(os.path.join(out, "model_index.json")))
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, DDPMPipeline)
    image = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 8, 8, 1) and 0 <= image.min() and image.max() <= 1 and image.std() > 0.01


def test_exported_weights_are_the_ema(tmp_path, digits):
    out = str(tmp_path / "ema")
    trainer = Trainer(tiny_unet(), tiny_scheduler(), digits, output_dir=out, **FAST)
    trainer.train()
    pipe = DiffusionPipeline.from_pretrained(out)
    names = [n for n, _ in trainer.unwrapped.named_parameters()]
    exported = dict(pipe.unet.named_parameters())
    assert all(torch.equal(exported[n], s) for n, s in zip(names, trainer.ema.shadow_params))
    assert any(not torch.equal(exported[n], p) for n, p in trainer.unwrapped.named_parameters())


def test_resume_continues_exactly(tmp_path, digits):
    straight = str(tmp_path / "straight")
    torch.manual_seed(1)
    model = tiny_unet()
    init = _weights(model)
    options = dict(FAST, max_steps=4, checkpointing_steps=2, gradient_accumulation_steps=2, seed=3)
    a = Trainer(model, tiny_scheduler(), digits, output_dir=straight, **options)
    a.train()
    part = str(tmp_path / "part")
    m2 = tiny_unet()
    m2.load_state_dict(init)
    Trainer(m2, tiny_scheduler(), digits, output_dir=part, **dict(options, max_steps=2)).train()
    m3 = tiny_unet()  # fresh weights: everything must come from the checkpoint
    c = Trainer(m3, tiny_scheduler(), digits, output_dir=part, **dict(options, resume_from_checkpoint="latest"))
    result = c.train()
    assert result.losses == a.losses
    for (k, v), w in zip(a.unwrapped.state_dict().items(), c.unwrapped.state_dict().values()):
        assert torch.equal(v, w), k
    assert all(torch.equal(x, y) for x, y in zip(a.ema.shadow_params, c.ema.shadow_params))


def test_class_conditional_run_and_pipeline(tmp_path, digits):
    out = str(tmp_path / "cond")
    trainer = Trainer(tiny_unet(num_class_embeds=11), tiny_scheduler(), digits, output_dir=out, **FAST)
    trainer.train()
    pipe = DiffusionPipeline.from_pretrained(out)
    assert isinstance(pipe, ClassConditionalPipeline)
    assert pipe.config.null_class_label == 10 and pipe.num_classes == 10 and pipe.labels["7"] == 7
    g = torch.Generator().manual_seed(0)
    images = pipe([3, 7], guidance_scale=2.0, num_inference_steps=2, generator=g, output_type="pt").images
    assert images.shape == (2, 1, 8, 8)
    by_name = pipe(["3", "7"], guidance_scale=2.0, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                   output_type="pt")  # fmt: skip
    torch.testing.assert_close(by_name.images, images)  # names map to the same labels
    # the label reaches the model: the same start noise under two labels gives two images
    g3, g7 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    three = pipe([3], guidance_scale=2.0, num_inference_steps=2, generator=g3, output_type="pt").images
    seven = pipe([7], guidance_scale=2.0, num_inference_steps=2, generator=g7, output_type="pt").images
    assert (three - seven).abs().max() > 1e-4


@pytest.mark.parametrize(
    "options",
    [
        {"prediction_type": "v_prediction", "loss_weighting": "min_snr", "noise_offset": 0.1},
        {"prediction_type": "sample", "mixed_precision": "bf16", "lr_schedule": "constant", "max_grad_norm": None},
        {"mixed_precision": "fp16", "use_ema": False, "channels_last": False, "lr_schedule": "linear"},
    ],
)
def test_objectives_and_precisions(tmp_path, digits, options):
    fast = dict(FAST, max_steps=2, num_sample_images=0, checkpointing_steps=10)
    with pytest.warns(UserWarning, match="fp16") if options.get("mixed_precision") == "fp16" else _nothing():
        trainer = Trainer(tiny_unet(), tiny_scheduler(), digits, output_dir=str(tmp_path), **fast, **options)
        result = trainer.train()
    assert all(torch.isfinite(torch.tensor(result.losses))) and result.losses[0] > 0
    pipe = DiffusionPipeline.from_pretrained(str(tmp_path))
    expected = options.get("prediction_type", "epsilon")
    assert pipe.scheduler.config.prediction_type == expected
    if not options.get("use_ema", True):  # no EMA: the folder holds the trained weights themselves
        trained = trainer.unwrapped.state_dict()
        assert all(torch.equal(v, trained[k].float()) for k, v in pipe.unet.state_dict().items())


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_lr_warmup_then_cosine():
    from torchdiffusion.training.config import lr_lambda

    f = lr_lambda(TrainingConfig(max_steps=10, lr_warmup_steps=4, lr_schedule="cosine"))
    assert [round(f(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert f(4) == 1.0 and f(10) == pytest.approx(0.0) and 0 < f(7) < 1


@pytest.mark.parametrize(
    "options, name",
    [
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"prediction_type": "noise"}, "prediction_type"),
        ({"loss_weighting": "snr"}, "loss_weighting"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"class_dropout_prob": 1.5}, "class_dropout_prob"),
        ({"ema_decay": 2}, "ema_decay"),
        ({"lr_schedule": "step"}, "lr_schedule"),
        ({"adam_betas": (0.9,)}, "adam_betas"),
        ({"checkpoints_total_limit": 0}, "checkpoints_total_limit"),
        ({"channels_last": "yes"}, "channels_last"),
        ({"channels_last": 1}, "channels_last"),
    ],
)
def test_bad_config(options, name):
    with pytest.raises(ValueError, match=name):
        TrainingConfig(**options)



@pytest.mark.parametrize(
    "options,expected",
    [({}, True), ({"mixed_precision": "bf16"}, False), ({"channels_last": False}, False),
     ({"channels_last": True, "mixed_precision": "bf16"}, True)],
)  # fmt: skip
def test_channels_last_default_is_the_measured_choice(digits, tmp_path, options, expected):
    """None (the default) resolves at set-up: on the CPU channels-last for a pixel-space model in fp32, NCHW under
    bf16 autocast; an explicit choice is kept, and the model's weights follow it."""
    assert TrainingConfig().channels_last is None
    trainer = Trainer(tiny_unet(), tiny_scheduler(), digits, output_dir=str(tmp_path), **options)
    trainer._setup()
    assert trainer.config.channels_last is expected
    weight = trainer.unwrapped.down_blocks[0].resnets[0].conv1.weight  # (C, C, 3, 3), C > 1: the layouts differ
    assert weight.is_contiguous(memory_format=torch.channels_last) is expected
    assert weight.is_contiguous() is not expected


def test_default_channels_last_per_device_model_and_precision():
    from torchdiffusion.training.config import default_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_channels_last(False, "no", cpu) and not default_channels_last(True, "no", cpu)
    assert not default_channels_last(False, "bf16", cpu)
    assert default_channels_last(True, "bf16", cuda)  # GPUs keep NHWC

def test_bad_trainer_arguments(digits, tmp_path):
    with pytest.raises(TypeError, match="model"):
        Trainer("unet", tiny_scheduler(), digits)
    with pytest.raises(TypeError, match="noise_scheduler"):
        Trainer(tiny_unet(), object(), digits)
    with pytest.raises(TypeError, match="unknown training option"):
        Trainer(tiny_unet(), tiny_scheduler(), digits, max_stepz=3)
    with pytest.raises(ValueError, match="num_class_embeds"):
        Trainer(tiny_unet(num_class_embeds=10), tiny_scheduler(), digits)
    with pytest.raises(ValueError, match="resume_from_checkpoint"):
        Trainer(
            tiny_unet(),
            tiny_scheduler(),
            digits,
            output_dir=str(tmp_path),
            resume_from_checkpoint=str(tmp_path),
            **FAST,
        ).train()


def test_push_to_hub_uploads_the_pipeline_folder(tmp_path, digits, monkeypatch):
    """push_to_hub=True (a training script's --push_to_hub) uploads the exported pipeline, not checkpoints or
    samples."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=None, token=None, exist_ok=False, **kw):
            calls.append(("create", repo_id, private, token))
            return type("Repo", (), {"repo_id": repo_id})()

        def file_exists(self, repo_id, filename, token=None, **kw):
            return False

        def upload_folder(self, repo_id, folder_path, commit_message=None, token=None, **kw):
            files = sorted(
                os.path.relpath(os.path.join(r, f), folder_path) for r, _, fs in os.walk(folder_path) for f in fs
            )
            calls.append(("upload", repo_id, commit_message, files))
            return "https://huggingface.co/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = str(tmp_path / "my-digits")
    torch.manual_seed(0)
    Trainer(tiny_unet(), tiny_scheduler(), digits, output_dir=out, push_to_hub=True, hub_private_repo=True,
            hub_token="hf_x", **FAST).train()  # fmt: skip
    create, upload = calls
    assert create == ("create", "my-digits", True, "hf_x")
    assert upload[1] == "my-digits" and "step 4" in upload[2]
    files = upload[3]
    assert "model_index.json" in files and "README.md" in files
    assert any(f.startswith("unet" + os.sep) for f in files) and any(f.startswith("scheduler" + os.sep) for f in files)
    assert not any(f.startswith(("checkpoints", "samples")) for f in files)


@pytest.mark.parametrize("bad", ["", "a/b/c", "no spaces"])
def test_hub_model_id_is_checked(bad):
    with pytest.raises(ValueError, match="hub_model_id"):
        TrainingConfig(hub_model_id=bad)


def test_in_training_samples_match_the_saved_pipeline(tmp_path, digits):
    """The sample grids drawn during training and `torchdiffusion generate` on the saved folder use the same
    sampler (an in-memory config marks timestep_spacing as defaulted; the saved one does not)."""
    from torchdiffusion.pipelines.generate import generate_from_pretrained as generate

    out = str(tmp_path / "run")
    torch.manual_seed(0)
    trainer = Trainer(tiny_unet(), tiny_scheduler(), digits, output_dir=out, **FAST)
    trainer.train()
    in_training = trainer.sample_images(3, 4, seed=7)
    from_disk, _ = generate(out, num_images=3, steps=4, seed=7)  # the default sampler, as in training
    torch.testing.assert_close(in_training, from_disk, atol=1e-5, rtol=0)


def test_swap_scheduler_keeps_spacing_and_thresholds_pixel_samples():
    from torchdiffusion import DDIMScheduler, DPMSolverMultistepScheduler
    from torchdiffusion.schedulers.samplers import swap_scheduler

    ddpm = tiny_scheduler()  # timestep_spacing defaulted ("leading"), variance_type "fixed_small"
    dpm = swap_scheduler(DPMSolverMultistepScheduler, ddpm.config)
    assert dpm.config.timestep_spacing == "leading" and dpm.config.thresholding and dpm.config.variance_type is None
    assert dpm.config.num_train_timesteps == 100 and dpm.config.beta_schedule == "squaredcos_cap_v2"
    ddim = swap_scheduler(DDIMScheduler, ddpm.config)
    assert ddim.config.timestep_spacing == "leading" and ddim.config.thresholding
    again = swap_scheduler(type(ddpm), ddpm.config)  # DDPM keeps its variance type and can step
    assert again.config.variance_type == "fixed_small" and again.config.thresholding
    again.set_timesteps(5)
    x = torch.randn(1, 1, 4, 4)
    assert torch.isfinite(again.step(torch.randn_like(x), again.timesteps[0], x).prev_sample).all()


def test_sampling_scheduler_builds_every_named_sampler():
    from torchdiffusion.pipelines.denoise import step_kwargs
    from torchdiffusion.schedulers.samplers import DEFAULT_SAMPLER, SAMPLERS, sampling_scheduler

    ddpm = tiny_scheduler()
    default = sampling_scheduler(DEFAULT_SAMPLER, ddpm.config)
    assert type(default).__name__ == "DPMSolverMultistepScheduler"
    assert default.config.algorithm_type == "sde-dpmsolver++" and default.config.thresholding
    assert default.config.timestep_spacing == "leading"
    x = torch.randn(2, 1, 4, 4)
    for name, (class_name, options) in SAMPLERS.items():
        scheduler = sampling_scheduler(name, ddpm.config)
        assert type(scheduler).__name__ == class_name
        assert all(scheduler.config[k] == v for k, v in options.items())
        scheduler.set_timesteps(4)
        t = scheduler.timesteps[0]
        extra = step_kwargs(scheduler, generator=torch.Generator())
        out = scheduler.step(torch.randn_like(x), t, scheduler.scale_model_input(x, t), **extra)
        assert torch.isfinite(out.prev_sample).all(), name
    with pytest.raises(ValueError, match="scheduler"):
        sampling_scheduler("dpm+++", ddpm.config)


def test_progress_bar_total_is_final_under_a_time_limit(tmp_path, digits, capsys):
    """Under a time limit the bar opens once the step budget is fitted (after the speed probe): one total, never
    the max_steps the run will not reach."""
    import re

    # 6 s, less the 10 s margin for saving: the budget ends at the step after the probe's 12
    options = dict(FAST, max_steps=40, progress_bar=True, time_limit_minutes=0.1, num_sample_images=0)
    result = Trainer(tiny_unet(), tiny_scheduler(), digits, output_dir=str(tmp_path), **options).train()
    assert result.step == 13
    shown = re.findall(r"(\d+)/(\d+) \[", capsys.readouterr().err)
    assert shown and {total for _, total in shown} == {"13"}
    assert int(shown[0][0]) == 12  # the probe's 12 steps ran before the bar opened
