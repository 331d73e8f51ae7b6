"""One text-to-image training step here and the tutorial's Stable Diffusion loop on the real Diffusers (its
``train_text_to_image.py`` core: VAE latents sampled and scaled, CLIP embeddings, noise added by the DDPM
scheduler, MSE against the noise), same batch and noise: same loss and gradients, for a full fine-tune and for
LoRA adapters added through peft on both sides."""

import pytest
import torch
import torch.nn.functional as F

from tests.training.t2i_common import write_metadata_folder

pytest.importorskip("peft")
diffusers = pytest.importorskip("diffusers")

SEED = 3
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def _ours(folder, data, lora_rank):
    from torchdiffusion.training import Trainer
    from torchdiffusion.training.data import collate
    from torchdiffusion.training.text_to_image import TextToImageTask

    task = TextToImageTask(folder, lora_rank=lora_rank, cache_latents=False)
    trainer = Trainer(task, dataset=data, output_dir="unused", batch_size=3, seed=SEED, progress_bar=False)
    trainer._setup()
    return trainer, collate([data[k] for k in trainer.plan.keys(0)])


def _diffusers_step(folder, batch, unet):
    """The tutorial's loop body (Diffusers' train_text_to_image.py), given our batch, noise and timesteps."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from torchdiffusion.training.data import mix_seed
    from torchdiffusion.training.losses import draw_step_noise

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").requires_grad_(False)
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae").requires_grad_(False)
    noise_scheduler = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    input_ids = tokenizer(
        batch["captions"], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
        return_tensors="pt",
    ).input_ids  # fmt: skip
    generator = torch.Generator().manual_seed(mix_seed(SEED, "latent", 0))  # the generator our step draws from
    latents = vae.encode(batch["images"]).latent_dist.sample(generator=generator)
    latents = latents * vae.config.scaling_factor
    noise, timesteps, _, _ = draw_step_noise(SEED, 0, tuple(latents.shape), noise_scheduler.config.num_train_timesteps)
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
    loss.backward()
    return loss


def _assert_close_grads(ours, theirs):
    assert ours.keys() == theirs.keys() and ours
    flat_o = torch.cat([ours[k].flatten() for k in sorted(ours)])
    flat_t = torch.cat([theirs[k].flatten() for k in sorted(ours)])
    assert flat_t.norm() > 0
    assert (flat_o - flat_t).norm() <= 1e-4 * flat_t.norm(), (flat_o - flat_t).norm() / flat_t.norm()
    for k in ours:  # and tensor by tensor (those with a gradient worth the name)
        ref = theirs[k].norm()
        if ref > 1e-3 * flat_t.norm() / len(ours) ** 0.5:
            assert (ours[k] - theirs[k]).norm() <= 1e-4 * ref, k


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from torchdiffusion.training.sources import load_captioned_dataset

    return load_captioned_dataset(write_metadata_folder(str(tmp_path_factory.mktemp("captions")), 6), 64)


def test_full_fine_tune_step_matches_the_tutorials_loop(tiny_sd_folder, data):
    torch.manual_seed(0)
    trainer, batch = _ours(tiny_sd_folder, data, None)
    loss = trainer._micro_batch(batch, 0)
    loss.backward()
    ours = {n: p.grad for n, p in trainer.task.model.unet.named_parameters()}
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet")
    ref = _diffusers_step(tiny_sd_folder, batch, unet)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    _assert_close_grads(ours, {n: p.grad for n, p in unet.named_parameters()})


def test_lora_step_matches_the_tutorials_loop_with_peft(tiny_sd_folder, data):
    from peft import LoraConfig

    trainer, batch = _ours(tiny_sd_folder, data, 4)
    ours_unet = trainer.task.model.unet
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_sd_folder, subfolder="unet").requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    ours_lora = {n: p for n, p in ours_unet.named_parameters() if p.requires_grad}
    theirs_lora = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    assert ours_lora.keys() == theirs_lora.keys() and all("lora_" in n for n in ours_lora)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the same non-zero adapters on both sides (lora_B starts at 0: lora_A would get none)
        for name in sorted(ours_lora):
            value = torch.randn(ours_lora[name].shape, generator=g) * 0.1
            ours_lora[name].copy_(value)
            theirs_lora[name].copy_(value)
    loss = trainer._micro_batch(batch, 0)
    loss.backward()
    ref = _diffusers_step(tiny_sd_folder, batch, unet)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    _assert_close_grads({n: p.grad for n, p in ours_lora.items()}, {n: p.grad for n, p in theirs_lora.items()})
