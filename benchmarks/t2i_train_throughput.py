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
    python benchmarks/t2i_train_throughput.py --mixed-precision bf16   # bf16 autocast on both sides (bf16 CPUs)
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
SETTINGS = {"mixed_precision": "no"}  # --mixed-precision, for both sides (set once in main)
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
    options = {**TEXT_TO_IMAGE_DEFAULTS, "batch_size": batch_size, "learning_rate": LR, "max_steps": 10**6,
               "mixed_precision": SETTINGS["mixed_precision"]}  # fmt: skip
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

    bf16 = SETTINGS["mixed_precision"] == "bf16"  # accelerate's autocast over the forward, as the scripts do
    while True:
        for batch in loader:
            start = clock["t"] = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
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


SIDES = ("diffusers (tutorial loop)", "ours, cached latents", "ours, no cache")


def make_side(name: str, folder: str, data: Images, batch_size: int, lora: bool):
    """One side of the comparison: a generator of step times and its set-up seconds (the cache build included)."""
    if name == SIDES[0]:
        return diffusers_steps(folder, data, batch_size, lora), 0.0
    trainer, setup = our_trainer(folder, data, batch_size, lora, name == SIDES[1])
    return ours_steps(trainer), setup


def breakdown(name: str, folder: str, data: Images, batch_size: int, lora: bool, steps: int) -> dict[str, float]:
    """Median seconds per phase of one side's step (its first step is a warm-up and not counted)."""
    if name == SIDES[0]:
        phases: dict[str, list[float]] = {}
        gen = diffusers_steps(folder, data, batch_size, lora, phases)
        for _ in range(steps + 1):
            next(gen)
        return {k: statistics.median(v[1:]) for k, v in phases.items()}
    return our_phases(folder, data, batch_size, lora, name == SIDES[1], steps)


def side_child(folder: str, lora: bool, index: int, what: str, args) -> None:
    """``--isolate``'s child: one side's timed steps (after a warm-up step) or its phase breakdown, as JSON."""
    data = Images(max(4 * args.batch_size, 8), args.resolution)
    if what == "phases":
        print(json.dumps(breakdown(SIDES[index], folder, data, args.batch_size, lora, args.steps)))
        return
    gen, setup = make_side(SIDES[index], folder, data, args.batch_size, lora)
    next(gen)
    print(json.dumps({"times": [next(gen) for _ in range(args.steps)], "setup": setup}))


def run_child(args, *extra: str) -> str:
    cmd = [sys.executable, __file__, "--preset", args.preset, "--resolution", str(args.resolution), "--batch-size",
           str(args.batch_size), "--steps", str(args.steps), "--mixed-precision", args.mixed_precision,
           *extra]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]


def timings(folder: str, data: Images, lora: bool, args) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Step times of each side over ``args.rounds`` rounds (the sides take turns within a round, so load changes
    hit all alike) and each side's set-up seconds. With ``--isolate`` each side's round runs in a fresh process
    (one model in memory at a time: SD 1.5's full fine-tune needs ~17 GB for weights, gradients, AdamW and EMA)."""
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    setups: dict[str, float] = {}
    if args.isolate:
        kind = "lora" if lora else "full"
        for r in range(args.rounds):
            order = list(range(len(SIDES)))
            for i in order[r % 3 :] + order[: r % 3]:  # rotate which side goes first
                out = json.loads(run_child(args, "--side-child", folder, kind, str(i), "times"))
                times[SIDES[i]] += out["times"]
                setups[SIDES[i]] = out["setup"]
        return times, setups
    gens = {}
    for name in SIDES:
        gens[name], setups[name] = make_side(name, folder, data, args.batch_size, lora)
        next(gens[name])  # warm-up step (allocation, first-call costs)
    for _ in range(args.rounds):
        for name, gen in gens.items():
            times[name] += [next(gen) for _ in range(args.steps)]
    return times, setups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no", help="both sides (CPU bf16 units)")
    parser.add_argument("--isolate", action="store_true", help="each side's round in its own process (default for "
                        "--preset sd, whose three full fine-tunes do not fit in memory together)")  # fmt: skip
    parser.add_argument("--rss-child", nargs=2, metavar=("FOLDER", "KIND"), help=argparse.SUPPRESS)
    parser.add_argument("--side-child", nargs=4, metavar=("FOLDER", "KIND", "SIDE", "WHAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.resolution = args.resolution or PRESETS[args.preset][3]
    SETTINGS["mixed_precision"] = args.mixed_precision
    args.isolate = args.isolate or args.preset == "sd"
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1] == "lora", args.batch_size, args.resolution, max(2, args.steps))
        return
    if args.side_child:
        folder, kind, index, what = args.side_child
        side_child(folder, kind == "lora", int(index), what, args)
        return
    import diffusers

    folder = build_folder(args.preset)
    data = Images(max(4 * args.batch_size, 8), args.resolution)
    print(f"preset {args.preset}, {args.resolution} px, batch {args.batch_size}, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}, threads {torch.get_num_threads()}, mixed precision "
          f"{args.mixed_precision}"
          + (", each side's round in its own process" if args.isolate else ""))  # fmt: skip
    for lora in (False, True):
        kind = f"LoRA rank {RANK}" if lora else "full fine-tune + EMA"
        times, setups = timings(folder, data, lora, args)
        rate = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
        print(f"\n{kind}: images/s")
        for name, r in rate.items():
            print(f"  {name:28s} {r:8.3g}")
        base = rate[SIDES[0]]
        print(f"  ratio ours/diffusers: cached {rate[SIDES[1]] / base:.2f}x, no cache {rate[SIDES[2]] / base:.2f}x")
        print(f"  building the cache of {len(data)} images took ~{setups[SIDES[1]] - setups[SIDES[2]]:.2f} s "
              "(once per run)")  # fmt: skip
        print("  where a step's time goes (median ms):")
        for name, label in zip(SIDES, ("diffusers  ", "ours cached", "ours       ")):
            if args.isolate:
                phases = json.loads(run_child(args, "--side-child", folder, "lora" if lora else "full",
                                              str(SIDES.index(name)), "phases"))  # fmt: skip
            else:
                phases = breakdown(name, folder, data, args.batch_size, lora, args.steps)
            print(f"    {label}: " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in phases.items()))
    peaks = {kind: json.loads(run_child(args, "--rss-child", folder, kind)) for kind in ("full", "lora")}
    big, small = peaks["full"], peaks["lora"]
    print(
        f"\npeak RSS (own process each): full {big['peak_rss_mb']:.0f} MB, LoRA {small['peak_rss_mb']:.0f} MB, "
        f"ratio LoRA/full {small['peak_rss_mb'] / big['peak_rss_mb']:.2f}; above the {big['baseline_mb']:.0f} MB "
        f"of the imported libraries: full {big['peak_rss_mb'] - big['baseline_mb']:.0f} MB, LoRA "
        f"{small['peak_rss_mb'] - small['baseline_mb']:.0f} MB (the ratio means something at SD-shaped sizes)"
    )


if __name__ == "__main__":
    main()
