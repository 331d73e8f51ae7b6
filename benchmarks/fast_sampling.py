"""Fast sampling on an SD-1.5-shaped model: Diffusers' defaults vs ours at defaults, each speed option alone and
all combined, timed end to end (prompt encoding, classifier-free-guided denoising, VAE decode).

Random weights in the real SD 1.5 layout (UNet widths 320/640/1280/1280, cross-attention 768, a 4-level VAE;
a narrow 2-layer CLIP text encoder, the same for both libraries), saved once with Diffusers and loaded by both.
Default: 512 x 512 (latent 64), 20 PNDM steps, guidance 7.5. Variants, timed round-robin in one run so machine
noise hits all alike (after a 1-step warm-up call of each, not counted):

    diffusers      Diffusers' StableDiffusionPipeline at its defaults
    ours           ours at defaults (same arguments)
    cache          + cache_interval / cache_depth (UNet feature caching)
    guidance_end   + guidance_end (classifier-free guidance for the first fraction of the steps only)
    tiny_vae       + AutoencoderTiny (TAESD layout, random weights) as the decoder
    all            all of the above
    preset         FAST_PRESET, what ``generate --fast`` does (its own step count, cache and guidance_end)
    preset+tiny    the preset with the tiny VAE
    lcm4           what ``generate --fast`` does where an LCM-LoRA exists: LoRA rank 16 on the attention projections
                   (random: the time is the same as a distilled one's), LCMScheduler, 4 steps, guidance 1

Prints median seconds per image and the ratios to Diffusers and to ours at defaults.

    python benchmarks/fast_sampling.py [--size 64] [--steps 20] [--runs 2] [--threads 2]
        [--cache-interval 3] [--cache-depth 1] [--guidance-end 0.5] [--widths 320,640,1280,1280]
        [--vae-widths 128,256,512,512] [--variants diffusers,ours,preset]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def save_sd15_shaped(folder: str, widths: tuple[int, ...], vae_widths: tuple[int, ...], size: int) -> str:
    """Write a random SD-1.5-shaped pipeline folder with Diffusers' own ``save_pretrained``."""
    import diffusers

    from tests.sd_fixtures import SCHEDULER_KWARGS, tiny_text_encoder, tiny_tokenizer

    cross = 768
    tokenizer = tiny_tokenizer(folder + "_tok")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=size, block_out_channels=widths, cross_attention_dim=cross, layers_per_block=2,
        attention_head_dim=8, norm_num_groups=min(32, widths[0]),
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        sample_size=size * 8, block_out_channels=vae_widths, latent_channels=4, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=min(32, vae_widths[0]),
    )  # fmt: skip
    text_encoder = tiny_text_encoder(
        tokenizer, hidden_size=cross, projection_dim=cross, num_attention_heads=12, intermediate_size=4 * cross,
        num_hidden_layers=2,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(),
        scheduler=diffusers.PNDMScheduler(**SCHEDULER_KWARGS), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return folder


def tiny_vae(seed: int = 0):
    """Our AutoencoderTiny in TAESD's default layout with random weights."""
    import torchdiffusion as td

    torch.manual_seed(seed)
    return td.AutoencoderTiny().eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="latent size (64: 512 x 512 images)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2, help="timed rounds (each runs every variant once)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--cache-interval", type=int, default=3)
    parser.add_argument("--cache-depth", type=int, default=1)
    parser.add_argument("--guidance-end", type=float, default=0.5)
    parser.add_argument("--widths", default="320,640,1280,1280", help="UNet block widths (narrow: a smoke run)")
    parser.add_argument("--vae-widths", default="128,256,512,512", help="VAE block widths (SD 1.5's by default)")
    parser.add_argument("--variants", default=None, help="comma-separated subset to time (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    vae_widths = tuple(int(w) for w in args.vae_widths.split(","))

    import diffusers

    import torchdiffusion as td
    from torchdiffusion.pipelines.speed_options import FAST_PRESET

    with tempfile.TemporaryDirectory() as tmp:  # the random weights, saved once, loaded by both libraries
        folder = save_sd15_shaped(os.path.join(tmp, "sd15_shaped"), widths, vae_widths, args.size)
        theirs = diffusers.StableDiffusionPipeline.from_pretrained(folder)
        ours = td.StableDiffusionPipeline.from_pretrained(folder)
        chosen = args.variants.split(",") if args.variants else None
        lcm = td.StableDiffusionPipeline.from_pretrained(folder) if chosen is None or "lcm4" in chosen else None
    if lcm is not None:
        from peft import LoraConfig

        torch.manual_seed(0)
        lcm.unet.add_adapter(LoraConfig(r=16, lora_alpha=16, init_lora_weights="gaussian",
                                        target_modules=["to_q", "to_k", "to_v", "to_out.0"]))  # fmt: skip
        lcm.scheduler = td.LCMScheduler.from_config(lcm.scheduler.config)
        lcm.set_progress_bar_config(disable=True)
    ours_tiny = td.StableDiffusionPipeline(**{**ours.components, "vae": tiny_vae()}, requires_safety_checker=False)
    for pipe in (theirs, ours, ours_tiny):
        pipe.set_progress_bar_config(disable=True)
    cache = dict(cache_interval=args.cache_interval, cache_depth=args.cache_depth)
    guidance = dict(guidance_end=args.guidance_end)
    variants = {
        "diffusers": (theirs, {}),
        "ours": (ours, {}),
        "cache": (ours, cache),
        "guidance_end": (ours, guidance),
        "tiny_vae": (ours_tiny, {}),
        "all": (ours_tiny, {**cache, **guidance}),
        "preset": (ours, dict(FAST_PRESET)),
        "preset+tiny": (ours_tiny, dict(FAST_PRESET)),
    }
    if lcm is not None:
        variants["lcm4"] = (lcm, {"num_inference_steps": 4, "guidance_scale": 1.0})
    if chosen:
        unknown = sorted(set(chosen) - set(variants))
        if unknown:
            parser.error(f"--variants: unknown {unknown}; choose from {sorted(variants)}")
        variants = {name: variants[name] for name in variants if name in chosen}
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {args.threads}, "
        f"{args.size * 8} x {args.size * 8} (latent {args.size}), {args.steps} steps, CFG {args.guidance_scale}, "
        f"UNet widths {widths}; cache {cache}, {guidance}; preset {FAST_PRESET}"
    )
    times: dict[str, list[float]] = {name: [] for name in variants}
    for run in range(args.runs + 1):  # round 0: a 1-step warm-up call of each variant
        for name, (pipe, options) in variants.items():
            start = time.perf_counter()
            with torch.no_grad():
                call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, **options}
                if not run:
                    call["num_inference_steps"] = 1
                pipe("a photo of the cat", output_type="np", generator=torch.Generator().manual_seed(0), **call)
            if run:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{'variant':14s} {'s/image':>9s} {'/diffusers':>11s} {'/ours':>7s}")
    base, ref = med.get("diffusers", float("nan")), med.get("ours", float("nan"))
    for name, seconds in med.items():
        print(f"{name:14s} {seconds:9.2f} {seconds / base:10.2f}x {seconds / ref:6.2f}x")


if __name__ == "__main__":
    main()
