"""Text-to-image fine-tuning throughput (images/s): torchdiffusion's Trainer vs the tutorial's Stable Diffusion loop
on Diffusers (the core of ``train_text_to_image.py`` / ``train_text_to_image_lora.py``), same model, data, batch,
resolution and settings (fp32, AdamW lr 1e-4 betas (0.9, 0.999) weight decay 1e-2, gradient clipping at 1.0; the
full fine-tune with EMA decay 0.9999 on both sides, LoRA rank 4 on to_q/to_k/to_v/to_out.0 through peft on both).

Printed, from one run (rounds alternate between the sides, so load changes hit all alike; median step times):

* images/s of each side and the ours/Diffusers ratios, full and LoRA; ours with the latent cache on (the default
  here: frozen VAE and text encoder, no random augmentation) and off, plus the one-time cost of building the cache;
* where a step's time goes (tokenize + text encode, VAE encode, UNet forward, backward, optimizer + clipping + EMA),
  measured phase by phase on each library's modules;
* the peak RSS of a LoRA run and of a full fine-tune of the same model, each in its own process, and their ratio.

    python benchmarks/t2i_train_throughput.py --preset tiny --steps 2 --rounds 1    # a check that it runs
    python benchmarks/t2i_train_throughput.py --preset small                        # SD 1.x layout, narrowed
    python benchmarks/t2i_train_throughput.py --preset sd --resolution 256 --batch-size 1   # SD 1.5's shapes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PRESETS = {  # UNet, VAE and text-encoder overrides of tests/sd_fixtures.py, and the default resolution
    "tiny": ({}, {}, {}, 64),
    "small": (
        dict(block_out_channels=(64, 128, 256, 256), attention_head_dim=8, cross_attention_dim=256, norm_num_groups=32,
             sample_size=16),
        dict(block_out_channels=(32, 64, 128, 128), layers_per_block=2, norm_num_groups=32, sample_size=128),
        dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=4, projection_dim=256),
        128,
    ),
    "sd": (
        dict(block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
             norm_num_groups=32, sample_size=64),
        dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512),
        dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768),
        256,
    ),
}  # fmt: skip
LR, RANK, TARGETS = 1e-4, 4, ["to_k", "to_q", "to_v", "to_out.0"]
CAPTIONS = ["a photo of the cat", "the dog", "a cat and a dog", "the photo"]


def build_folder(preset: str) -> str:
    """An SD pipeline folder of ``preset``'s shapes, random weights, saved by Diffusers."""
    import diffusers

    from tests.sd_fixtures import SCHEDULER_KWARGS, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae

    unet_kw, vae_kw, text_kw, _ = PRESETS[preset]
    folder = os.path.join(tempfile.mkdtemp(), "sd")
    tokenizer = tiny_tokenizer(folder + "_tok")
    pipe = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(diffusers, 1, **vae_kw), text_encoder=tiny_text_encoder(tokenizer, 2, **text_kw),
        tokenizer=tokenizer, unet=tiny_unet(diffusers, 3, **unet_kw), scheduler=diffusers.PNDMScheduler(
            **SCHEDULER_KWARGS), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


class Images(torch.utils.data.Dataset):
    """``n`` smooth random images in [-1, 1] with captions (no augmentation: cacheable)."""

    random_augmentation = False

    def __init__(self, n: int, resolution: int) -> None:
        g = torch.Generator().manual_seed(0)
        low = torch.rand((n, 3, 8, 8), generator=g) * 2 - 1
        self.images = F.interpolate(low, size=(resolution, resolution), mode="bilinear", align_corners=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, key):
        i = int(key[0] if isinstance(key, tuple) else key)
        return {"images": self.images[i], "labels": -1, "captions": CAPTIONS[i % len(CAPTIONS)]}


def our_trainer(folder: str, data: Images, batch_size: int, lora: bool, cache: bool):
    """Our Trainer, set up (cache built if on); returns it and the set-up seconds."""
    from torchdiffusion.training import Trainer
    from torchdiffusion.training.recipes import TEXT_TO_IMAGE_DEFAULTS
    from torchdiffusion.training.text_to_image import TextToImageTask

    task = TextToImageTask(folder, lora_rank=RANK if lora else None, cache_latents=cache)
    options = {**TEXT_TO_IMAGE_DEFAULTS, "batch_size": batch_size, "learning_rate": LR, "max_steps": 10**6}
    trainer = Trainer(task, dataset=data, output_dir=tempfile.mkdtemp(), progress_bar=False, **options)
    start = time.perf_counter()
    trainer._setup()
    return trainer, time.perf_counter() - start


def ours_steps(trainer):
    """Our Trainer's optimizer steps, as a generator of step times (the batch fetch included)."""
    from torchdiffusion.training.data import iterate_batches

    batches = iterate_batches(trainer.train_data, trainer.plan)
    while True:
        start = time.perf_counter()
        trainer._optimizer_step(batches)
        yield time.perf_counter() - start


def diffusers_parts(folder: str, lora: bool):
    import diffusers
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").requires_grad_(False)
    vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae").requires_grad_(False)
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    ema = None
    if lora:
        from peft import LoraConfig

        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian", target_modules=TARGETS))
    else:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=0.9999)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    return tokenizer, text_encoder, vae, unet.train(), scheduler, params, optimizer, ema


def diffusers_steps(folder: str, data: Images, batch_size: int, lora: bool, phases: dict | None = None):
    """The tutorial's loop on Diffusers, as a generator of step times; with ``phases`` (a dict of lists) each
    phase's time is recorded too."""
    tokenizer, text_encoder, vae, unet, scheduler, params, optimizer, ema = diffusers_parts(folder, lora)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    clock = {"t": 0.0}

    def mark(name: str) -> None:
        now = time.perf_counter()
        if phases is not None:
            phases.setdefault(name, []).append(now - clock["t"])
        clock["t"] = now

    while True:
        for batch in loader:
            start = clock["t"] = time.perf_counter()
            input_ids = tokenizer(batch["captions"], max_length=tokenizer.model_max_length, padding="max_length",
                                  truncation=True, return_tensors="pt").input_ids  # fmt: skip
            encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
            mark("tokenize + text encode")
            latents = vae.encode(batch["images"]).latent_dist.sample() * vae.config.scaling_factor
            mark("VAE encode")
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
            noisy_latents = scheduler.add_noise(latents, noise, timesteps)
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
            mark("UNet forward")
            loss.backward()
            mark("backward")
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if ema is not None:
                ema.step(unet.parameters())
            mark("optimizer (+ EMA)")
            yield time.perf_counter() - start


def our_phases(folder: str, data: Images, batch_size: int, lora: bool, cache: bool, steps: int) -> dict:
    """Median phase times of our Trainer's step, timed around the calls the step makes: the task's inputs (text
    and VAE encode, or the cache lookup), the model's forward, the backward, the optimizer step; the rest is
    clipping, EMA, the LR schedule and the batch fetch."""
    trainer, _ = our_trainer(folder, data, batch_size, lora, cache)
    gen = ours_steps(trainer)
    next(gen)  # warm-up
    phases: dict[str, list[float]] = {}

    def timed(name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            phases.setdefault(name, []).append(time.perf_counter() - start)
            return out

        return run

    trainer.task.inputs = timed("encode (text + VAE, or cache)", trainer.task.inputs)
    trainer.wrapped.forward = timed("UNet forward", trainer.wrapped.forward)
    trainer.accelerator.backward = timed("backward", trainer.accelerator.backward)
    trainer.optimizer.step = timed("optimizer", trainer.optimizer.step)
    total = [next(gen) for _ in range(steps)]
    out = {k: statistics.median(v) for k, v in phases.items()}
    out["clipping + EMA + rest"] = statistics.median(total) - sum(out.values())
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` of ``/proc/self/status`` (Linux; reset by ``exec``, unlike
    ``getrusage``'s ``ru_maxrss``, which a child started by ``fork`` + ``exec`` inherits from its parent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(folder: str, lora: bool, batch_size: int, resolution: int, steps: int) -> None:
    import torchdiffusion.training.text_to_image  # noqa: F401  (the libraries, before the baseline)

    baseline = peak_rss_mb()
    gen = ours_steps(our_trainer(folder, Images(max(8, batch_size), resolution), batch_size, lora, True)[0])
    for _ in range(steps):
        next(gen)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "baseline_mb": baseline}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rss-child", nargs=2, metavar=("FOLDER", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    resolution = args.resolution or PRESETS[args.preset][3]
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1] == "lora", args.batch_size, resolution, max(2, args.steps))
        return
    import diffusers

    folder = build_folder(args.preset)
    data = Images(max(4 * args.batch_size, 8), resolution)
    print(f"preset {args.preset}, {resolution} px, batch {args.batch_size}, torch {torch.__version__}, diffusers "
          f"{diffusers.__version__}, threads {torch.get_num_threads()}")  # fmt: skip
    for lora in (False, True):
        kind = f"LoRA rank {RANK}" if lora else "full fine-tune + EMA"
        cached, cached_setup = our_trainer(folder, data, args.batch_size, lora, True)
        plain, plain_setup = our_trainer(folder, data, args.batch_size, lora, False)
        sides = {
            "diffusers (tutorial loop)": diffusers_steps(folder, data, args.batch_size, lora),
            "ours, cached latents": ours_steps(cached),
            "ours, no cache": ours_steps(plain),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for gen in sides.values():
            next(gen)  # warm-up step (allocation, first-call costs)
        for _ in range(args.rounds):
            for name, gen in sides.items():
                times[name] += [next(gen) for _ in range(args.steps)]
        rate = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
        print(f"\n{kind}: images/s")
        for name, r in rate.items():
            print(f"  {name:28s} {r:8.2f}")
        base = rate["diffusers (tutorial loop)"]
        print(f"  ratio ours/diffusers: cached {rate['ours, cached latents'] / base:.2f}x, "
              f"no cache {rate['ours, no cache'] / base:.2f}x")  # fmt: skip
        build = cached_setup - plain_setup
        print(f"  building the cache of {len(data)} images took ~{build:.2f} s (once per run)")
        del sides, cached, plain
        phases: dict = {}
        gen = diffusers_steps(folder, data, args.batch_size, lora, phases)
        for _ in range(args.steps + 1):
            next(gen)
        print("  where a step's time goes (median ms):")
        print("    diffusers: " + ", ".join(f"{k} {statistics.median(v[1:]) * 1e3:.1f}" for k, v in phases.items()))
        for cache in (False, True):
            ours = our_phases(folder, data, args.batch_size, lora, cache, args.steps)
            label = "ours cached" if cache else "ours       "
            print(f"    {label}: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in ours.items()))
    peaks = {}
    for kind in ("full", "lora"):
        cmd = [sys.executable, __file__, "--preset", args.preset, "--resolution", str(resolution), "--batch-size",
               str(args.batch_size), "--steps", str(args.steps), "--rss-child", folder, kind]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        peaks[kind] = json.loads(out)
    big, small = peaks["full"], peaks["lora"]
    print(f"\npeak RSS (own process each): full {big['peak_rss_mb']:.0f} MB, LoRA {small['peak_rss_mb']:.0f} MB, "
          f"ratio LoRA/full {small['peak_rss_mb'] / big['peak_rss_mb']:.2f}; above the {big['baseline_mb']:.0f} MB "
          f"of the imported libraries: full {big['peak_rss_mb'] - big['baseline_mb']:.0f} MB, LoRA "
          f"{small['peak_rss_mb'] - small['baseline_mb']:.0f} MB (the ratio means something at SD-shaped sizes)")


if __name__ == "__main__":
    main()
