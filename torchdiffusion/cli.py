"""The ``torchdiffusion`` command: ``demo``, ``train``, ``generate``, ``serve`` and ``pretrain-embedded``.

torchdiffusion generate "a red 7 on a blue background" --num-images 8 --out sevens.png   # the embedded model

torchdiffusion demo                                   # the embedded text-to-image model + LoRA, ~2 minutes
torchdiffusion train --dataset digits --resolution 16 --steps 1500 --output-dir runs/digits
torchdiffusion generate runs/digits --num-images 16 --scheduler sde-dpm++ --steps 25 --out grid.png
torchdiffusion train --pretrained SD_FOLDER_OR_ID --dataset captions/ --lora-rank 8 --output-dir runs/lora \
    --validation-prompt "a red fox"                   # text-to-image fine-tuning (full without --lora-rank)
torchdiffusion generate SD_FOLDER "a red fox" --lora runs/lora --lora-scale 0.8 --out fox.png
torchdiffusion serve path/to/sd-folder --port 7860   # AUTOMATIC1111's API + a web page
torchdiffusion pretrain-embedded --output-dir runs/captioned-digits --minutes 60   # retrain the embedded model
torchdiffusion distill-lcm --output-dir runs/lcm --minutes 10   # LCM-LoRA: the embedded model in 4 steps
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any


def _channels(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints like 32,64,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"channel widths must be positive, got {text!r}")
    return values


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data and model")
    data.add_argument("--dataset", default="digits",
                      help="'digits' or 'captioned-digits' (built in), an image folder, or a Hub name")  # fmt: skip
    data.add_argument("--resolution", type=int, default=None,
                      help="image size (default 16; text-to-image: the UNet's sample size x 8)")  # fmt: skip
    data.add_argument("--class-conditional", action="store_true", help="condition on labels (digits, subfolders)")
    data.add_argument("--random-flip", action=argparse.BooleanOptionalAction, default=None,
                      help="flip images left-right (default: on, off for digits)")  # fmt: skip
    data.add_argument("--random-crop", action="store_true", help="random instead of centre crops")
    data.add_argument("--model-channels", type=_channels, default=None, help="UNet widths, e.g. 32,64,64")
    data.add_argument("--layers-per-block", type=int, default=2)
    run = p.add_argument_group("training")
    run.add_argument("--output-dir", required=True)
    run.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    run.add_argument("--batch-size", type=int, default=None, help="images per step and process (default 64; "
                     "text-to-image 16)")  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    run.add_argument("--learning-rate", type=float, default=None, help="default 1e-3; text-to-image 1e-4")
    run.add_argument("--lr-schedule", choices=("constant", "cosine", "linear"), default=None,
                     help="default cosine; text-to-image constant")  # fmt: skip
    run.add_argument("--lr-warmup-steps", type=int, default=None, help="default 100; text-to-image 0")
    run.add_argument("--gradient-accumulation-steps", type=int, default=1)
    run.add_argument("--max-grad-norm", type=float, default=1.0)
    run.add_argument("--prediction-type", choices=("epsilon", "v_prediction", "sample"), default=None)
    run.add_argument("--loss-weighting", choices=("none", "min_snr"), default="none")
    run.add_argument("--snr-gamma", type=float, default=5.0)
    run.add_argument("--noise-offset", type=float, default=0.0)
    run.add_argument("--class-dropout-prob", type=float, default=0.1)
    run.add_argument("--ema-decay", type=float, default=None, help="default 0.999; text-to-image 0.9999")
    run.add_argument("--no-ema", action="store_true")
    run.add_argument("--beta-schedule", default="squaredcos_cap_v2")
    run.add_argument("--checkpointing-steps", type=int, default=500)
    run.add_argument("--checkpoints-total-limit", type=int, default=2)
    run.add_argument("--sample-steps", type=int, default=500, help="write a sample grid every N steps")
    run.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    run.add_argument("--num-workers", type=int, default=0, help="data loading processes")
    run.add_argument("--time-limit-minutes", type=float, default=None)
    run.add_argument("--gradient-checkpointing", action="store_true")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--push-to-hub", action="store_true", help="upload the final pipeline folder to the Hub")
    run.add_argument("--hub-model-id", default=None, help="Hub repository id (default: the output folder's name)")
    run.add_argument("--hub-private-repo", action="store_true")
    run.add_argument("--report-to", choices=("tensorboard", "wandb"), default=None,
                     help="log through accelerate's tracker (the package must be installed)")  # fmt: skip
    _add_text_to_image_arguments(p)


def _add_text_to_image_arguments(p: argparse.ArgumentParser) -> None:
    t2i = p.add_argument_group("text-to-image fine-tuning (with --pretrained)")
    t2i.add_argument("--pretrained", default=None, help="a Stable Diffusion pipeline folder or Hub id to fine-tune")
    t2i.add_argument("--caption-column", default=None, help="caption key of metadata.jsonl / data set column (text)")
    t2i.add_argument("--image-column", default=None, help="image column of a datasets data set")
    t2i.add_argument("--lora-rank", type=int, default=None, help="train LoRA adapters of this rank (default: full)")
    t2i.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    t2i.add_argument("--train-text-encoder", action="store_true", help="LoRA adapters on the text encoder too")
    t2i.add_argument("--no-cache-latents", action="store_true", help="encode images and captions every step")
    t2i.add_argument("--caption-dropout-prob", type=float, default=0.0, help="share of captions made empty (CFG)")
    t2i.add_argument("--validation-prompt", action="append", default=[], help="a prompt of the validation grid "
                     "(repeat for more), drawn every --sample-steps")  # fmt: skip
    t2i.add_argument("--num-validation-images", type=int, default=4, help="images per validation prompt")


def build_parser() -> argparse.ArgumentParser:
    from .schedulers.samplers import DEFAULT_SAMPLER, SAMPLERS

    parser = argparse.ArgumentParser(prog="torchdiffusion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the embedded text-to-image model: a prompt grid, then LoRA teaches it a word")
    demo.add_argument("--output-dir", default="outputs/demo")
    demo.add_argument("--lora-minutes", type=float, default=1.5, help="time budget of the LoRA training")
    demo.add_argument("--lora-steps", type=int, default=1500, help="LoRA optimizer steps (at most)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--model", default=None, help="another Stable Diffusion folder (default: the embedded model)")
    train = sub.add_parser("train", help="train a diffusion model; the output folder is a pipeline folder")
    _add_train_arguments(train)
    gen = sub.add_parser("generate", help="sample images from a pipeline folder into a grid PNG",
                         description=GENERATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    gen.add_argument("pipeline", nargs="?", default=None,
                     help="a pipeline folder (what `train` wrote) or Hub id; omitted: the embedded model")  # fmt: skip
    gen.add_argument("prompt", nargs="?", default=None, help="the prompt (text-to-image pipelines)")
    gen.add_argument("--num-images", type=int, default=None, help="default 16; text-to-image 1")
    gen.add_argument("--scheduler", choices=sorted(SAMPLERS), default=None,
                     help=f"sampler (default {DEFAULT_SAMPLER}; text-to-image: the pipeline's own)")  # fmt: skip
    gen.add_argument("--lora", default=None, help="a LoRA file or folder to load (text-to-image)")
    gen.add_argument("--lora-scale", type=float, default=None, help="scale of the LoRA's effect (default 1)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--steps", type=int, default=None, help="default 25; with --fast the preset's")
    gen.add_argument("--fast", action="store_true",
                     help="text-to-image: with an LCM-LoRA (--lora from distill-lcm, any --lora with --scheduler "
                          "lcm, or the embedded model's) 4 "
                          "steps, no guidance; otherwise the fast preset (UNet feature caching every 3rd step, "
                          "guidance for the first half only); "
                          "both keep the quality of full compute on the embedded model's yardstick")  # fmt: skip
    gen.add_argument("--class-label", default=None, help="class index or name (class-conditional pipelines)")
    gen.add_argument("--guidance-scale", type=float, default=None, help="default 2; text-to-image 7.5")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default=None, help="the grid PNG (default grid.png unless --out-dir is given)")
    gen.add_argument("--out-dir", default=None, help="also (or only) write one PNG per image into this folder")
    pre = sub.add_parser("pretrain-embedded", help="retrain the embedded text-to-image model from scratch",
                         description=recipe_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    from .pretrained.recipe import add_arguments

    add_arguments(pre)
    from .training.distill_cli import add_distill_lcm_parser

    add_distill_lcm_parser(sub)
    from .serve.cli import add_serve_parser

    add_serve_parser(sub)
    return parser


GENERATE_HELP = """With one positional argument that is not an existing folder and not a Hub id (owner/name, no
spaces), the argument is the prompt and the model is the embedded one (torchdiffusion/captioned-digits):

  torchdiffusion generate "a red 7 on a blue background" --num-images 8 --seed 0 --out sevens.png
  torchdiffusion generate "a white 3 on a black background" --num-images 4 --out-dir threes/
"""


def recipe_doc() -> str:
    from .pretrained import recipe

    return recipe.__doc__ or ""


def split_model_and_prompt(pipeline: str | None, prompt: str | None) -> tuple[str, str | None]:
    """``generate``'s positional arguments -> (model, prompt): with no model, or a lone argument that is neither
    an existing path nor shaped like a Hub id (``owner/name`` without spaces), the model is the embedded one."""
    from .pretrained import EMBEDDED_MODEL

    if pipeline is None:
        return EMBEDDED_MODEL, prompt
    looks_like_model = os.path.exists(pipeline) or ("/" in pipeline and not any(c.isspace() for c in pipeline))
    if prompt is None and not looks_like_model:
        return EMBEDDED_MODEL, pipeline
    return pipeline, prompt


PIXEL_DEFAULTS = {"resolution": 16, "batch_size": 64, "learning_rate": 1e-3, "lr_schedule": "cosine",
                  "lr_warmup_steps": 100, "ema_decay": 0.999}  # fmt: skip


def _given(args: argparse.Namespace, defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The options that differ between pixel and text-to-image runs: given ones, else ``defaults`` (None: the
    recipe's own)."""
    out = {}
    for name in PIXEL_DEFAULTS:
        value = getattr(args, name)
        if value is None and defaults is not None:
            value = defaults[name]
        if value is not None:
            out[name] = value
    return out


def _common_options(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        output_dir=args.output_dir,
        max_steps=args.steps,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        max_grad_norm=args.max_grad_norm if args.max_grad_norm > 0 else None,
        prediction_type=args.prediction_type,
        loss_weighting=args.loss_weighting,
        snr_gamma=args.snr_gamma,
        noise_offset=args.noise_offset,
        use_ema=not args.no_ema,
        checkpointing_steps=args.checkpointing_steps,
        checkpoints_total_limit=args.checkpoints_total_limit,
        sample_steps=args.sample_steps,
        resume_from_checkpoint=args.resume,
        dataloader_num_workers=args.num_workers,
        time_limit_minutes=args.time_limit_minutes,
        gradient_checkpointing=args.gradient_checkpointing,
        progress_bar=not args.no_progress,
        push_to_hub=args.push_to_hub,
        hub_model_id=args.hub_model_id,
        hub_private_repo=args.hub_private_repo or None,
        report_to=args.report_to,
    )


def _run_train(args: argparse.Namespace) -> Any:
    if args.pretrained is not None:
        return _run_train_text_to_image(args)
    t2i = {"--lora-rank": args.lora_rank, "--caption-column": args.caption_column, "--image-column": args.image_column,
           "--train-text-encoder": args.train_text_encoder, "--validation-prompt": args.validation_prompt}  # fmt: skip
    given = [flag for flag, value in t2i.items() if value]
    if given:
        raise ValueError(f"{', '.join(given)}: text-to-image options need --pretrained (a Stable Diffusion model)")
    from .training.recipes import train

    return train(
        dataset=args.dataset,
        class_conditional=args.class_conditional,
        block_out_channels=args.model_channels,
        layers_per_block=args.layers_per_block,
        center_crop=not args.random_crop,
        random_flip=args.random_flip,
        beta_schedule=args.beta_schedule,
        class_dropout_prob=args.class_dropout_prob,
        num_sample_images=20 if args.class_conditional else 16,
        **_given(args, PIXEL_DEFAULTS),
        **_common_options(args),
    )


def _run_train_text_to_image(args: argparse.Namespace) -> Any:
    from .training.recipes import train_text_to_image

    if args.dataset == "digits":
        raise ValueError("--dataset: text-to-image training needs captioned images (a folder with metadata.jsonl or "
                         "name.txt captions, 'captioned-digits', or a Hub data set), not 'digits'")  # fmt: skip
    if args.class_conditional or args.model_channels:
        raise ValueError("--class-conditional / --model-channels do not apply with --pretrained")
    options = _given(args, None)
    return train_text_to_image(
        args.pretrained,
        args.dataset,
        caption_column=args.caption_column,
        image_column=args.image_column,
        resolution=options.pop("resolution", None),
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        text_encoder_lora=args.train_text_encoder,
        cache_latents=False if args.no_cache_latents else None,
        center_crop=not args.random_crop,
        random_flip=bool(args.random_flip),
        caption_dropout_prob=args.caption_dropout_prob,
        validation_prompts=tuple(args.validation_prompt),
        num_validation_images=args.num_validation_images,
        **options,
        **_common_options(args),
    )


def _save_each(images, folder: str) -> list[str]:
    """One PNG per image ``(N, C, H, W)`` in [-1, 1]: ``folder/image_000.png``... (the folder is created)."""
    from .utils.image_files import image_grid, save_image

    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, f"image_{i:03d}.png") for i in range(len(images))]
    for image, path in zip(images, paths):
        save_image(image_grid(image[None], cols=1, scale=1, pad=0), path)
    return paths


def _save_grid(images, cols, out: str) -> str:
    from .utils.image_files import image_grid, save_image

    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    save_image(image_grid(images, cols=cols, scale=max(1, 96 // images.shape[-1])), out)
    return out


def _quiet_weight_loading() -> None:
    """Hide transformers' "Loading weights" bars in commands that load a text-to-image pipeline and print their own
    progress (a Python caller keeps transformers' default)."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # the text extra is missing: loading the text encoder reports that
        return
    transformers_logging.disable_progress_bar()


def _run_demo(args: argparse.Namespace) -> int:
    from .pretrained.demo import run_demo

    _quiet_weight_loading()

    for name in ("lora_minutes", "lora_steps"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    print("torchdiffusion demo: the embedded text-to-image model, then a new word taught with LoRA", flush=True)
    run_demo(args.output_dir, args.lora_minutes, args.seed, args.model, args.lora_steps)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``torchdiffusion`` console script (and ``python -m torchdiffusion``)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo(args)
        if args.command == "serve":
            from .serve.cli import run_serve

            return run_serve(args)
        if args.command == "train":
            result = _run_train(args)
            if result.pipeline_path:
                what = "LoRA weights" if getattr(args, "lora_rank", None) else "pipeline folder"
                print(f"{what}: {os.path.abspath(result.pipeline_path)} ({result.step} steps)")
            return 0
        if args.command == "distill-lcm":
            from .training.distill_cli import run_distill_lcm

            return run_distill_lcm(args)
        if args.command == "pretrain-embedded":
            from .pretrained.recipe import run_from_args

            run_from_args(args)
            return 0
        model, prompt = split_model_and_prompt(args.pipeline, args.prompt)
        if prompt is not None:
            _quiet_weight_loading()
        from .pipelines.generate import generate_from_pretrained

        images, cols = generate_from_pretrained(model, args.num_images, args.scheduler, args.steps, args.class_label,
                                args.guidance_scale, args.seed, prompt, args.lora, args.lora_scale,
                                args.negative_prompt, args.fast)  # fmt: skip
        if args.out_dir is not None:
            paths = _save_each(images, args.out_dir)
            print(f"wrote {len(paths)} images into {os.path.abspath(args.out_dir)}")
        if args.out is not None or args.out_dir is None:
            print(f"wrote {os.path.abspath(_save_grid(images, cols, args.out or 'grid.png'))}")
        return 0
    except (ValueError, TypeError, ImportError, OSError) as err:
        print(f"torchdiffusion {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
