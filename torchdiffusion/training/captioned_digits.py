"""The ``captioned-digits`` data set: scikit-learn's embedded 8x8 handwritten digits drawn in a colour on a
coloured background (RGB, 32 x 32 by default), each with a caption from a small grammar.

Grammar (``{digit}`` is a numeral ``7`` or an English word ``seven``; ``{fg}`` != ``{bg}`` from :data:`PALETTE`)::

    a {fg} {digit} on a {bg} background  |  a {fg} {digit}  |  a {digit} on a {bg} background  |  {digit}

Held out of the training split: every image whose (digit, foreground colour) is in :data:`HELD_OUT_PAIRS`
((4, green), (7, red), (2, blue), (9, yellow)); ``split="held_out"`` holds exactly those, for evaluation.

Rendering: the 8x8 glyph is upsampled (bicubic, through one ``grid_sample``) into a box of 20-26 px with a
random position (at least 2 px from the border) and a rotation of at most 8 degrees, turned into a soft stroke
mask by a jittered threshold, and composited ``bg * (1 - mask) + fg * mask`` with both colours jittered by up
to +-12 per channel. Pixels are rounded to 8 bits, as a PNG would hold them. Everything is a pure function of
``(seed, split, num_images)``; images are rendered when asked for (nothing big is held in memory).
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import numpy as np
import torch

from .data import TrainingDataset, _generator_for, mix_seed

PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "red": (230, 30, 30),
    "green": (30, 180, 30),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 200),
    "orange": (250, 140, 20),
}
"""The eight colour words and their RGB values (index = position, used for the ``fg`` / ``bg`` labels)."""
COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)
PALETTE_RGB = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 255.0
"""``(8, 3)`` palette in [0, 1], rows in :data:`COLOR_NAMES` order."""
DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
HELD_OUT_PAIRS: tuple[tuple[int, str], ...] = ((4, "green"), (7, "red"), (2, "blue"), (9, "yellow"))
"""(digit, foreground colour) pairs that never appear in the training split."""
TEMPLATES: tuple[str, ...] = (
    "a {fg} {digit} on a {bg} background",
    "a {fg} {digit}",
    "a {digit} on a {bg} background",
    "{digit}",
)
TEMPLATE_WEIGHTS: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)
"""How often each template captions a training image (the full caption most often)."""
SPLITS: tuple[str, ...] = ("train", "held_out")
DEFAULT_SIZES = {"train": 20_000, "held_out": 2_000}
CHUNK = 1000  # items drawn per random stream

_HELD_FG = {d: COLOR_NAMES.index(c) for d, c in HELD_OUT_PAIRS}  # digit -> held-out foreground index
COLOR_JITTER = 12  # +- per channel, in 0..255 units (the closest palette colours are 81 apart)


class Prompt(NamedTuple):
    """A caption of the grammar and what it asks for (``fg`` / ``bg``: colour names, None when not said)."""

    text: str
    digit: int
    fg: str | None
    bg: str | None

    @property
    def held_out(self) -> bool:
        """True when ``(digit, fg)`` is one of :data:`HELD_OUT_PAIRS`."""
        return (self.digit, self.fg) in HELD_OUT_PAIRS


def make_caption(digit: int, fg: str | None = None, bg: str | None = None, word: bool = False) -> str:
    """The grammar's caption for ``digit`` (numeral, or English word when ``word``) with the colours given
    (``None``: not mentioned)."""
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)) or not 0 <= digit <= 9:
        raise ValueError(f"digit must be an int 0-9, got {digit!r}")
    for name, colour in (("fg", fg), ("bg", bg)):
        if colour is not None and colour not in PALETTE:
            raise ValueError(f"{name} must be None or one of {', '.join(COLOR_NAMES)}, got {colour!r}")
    if fg is not None and fg == bg:
        raise ValueError(f"fg and bg must differ, both are {fg!r}")
    template = TEMPLATES[(fg is None) * 2 + (bg is None)]
    return template.format(fg=fg, bg=bg, digit=DIGIT_WORDS[digit] if word else str(int(digit)))


_GROUPS = {"fg": "|".join(COLOR_NAMES), "bg": "|".join(COLOR_NAMES), "digit": "|".join(("[0-9]", *DIGIT_WORDS))}
_PATTERNS = [
    re.compile(re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m[1]}>{_GROUPS[m[1]]})", template)) for template in TEMPLATES
]


def parse_caption(caption: str) -> Prompt:
    """The :class:`Prompt` a caption of the grammar asks for (case and extra spaces are ignored).

    Raises ``ValueError`` naming ``caption`` for text outside the grammar.
    """
    if not isinstance(caption, str):
        raise TypeError(f"caption must be a str, got {type(caption).__name__}")
    text = " ".join(caption.lower().split())
    m = next((m for m in (p.fullmatch(text) for p in _PATTERNS) if m is not None), None)
    groups = m.groupdict() if m is not None else {}
    if m is None or (groups.get("fg") is not None and groups.get("fg") == groups.get("bg")):
        raise ValueError(f"caption {caption!r} is not in the captioned-digits grammar ({' | '.join(TEMPLATES)})")
    d = m["digit"]
    digit = int(d) if d.isdigit() else DIGIT_WORDS.index(d)
    return Prompt(text, digit, groups.get("fg"), groups.get("bg"))


def grammar_prompts(split: str = "in_distribution") -> list[Prompt]:
    """Every prompt of the grammar, in a fixed order: ``"in_distribution"`` (those whose (digit, fg) pair is not
    held out, including every prompt without a colour) or ``"held_out"`` (the 64 naming a held-out pair)."""
    if split not in ("in_distribution", "held_out"):
        raise ValueError(f"split must be 'in_distribution' or 'held_out', got {split!r}")
    out = []
    for digit in range(10):
        for fg in (*COLOR_NAMES, None):
            for bg in (*COLOR_NAMES, None):
                if fg is not None and fg == bg:
                    continue
                if ((digit, fg) in HELD_OUT_PAIRS) != (split == "held_out"):
                    continue
                out += [Prompt(make_caption(digit, fg, bg, word), digit, fg, bg) for word in (False, True)]
    return out


def yardstick_prompts(num_per_set: int = 64, seed: int = 0) -> dict[str, list[Prompt]]:
    """The yardstick's prompt sets: ``{"in_distribution": [...], "held_out": [...]}``, ``num_per_set`` prompts
    each, drawn without repetition from :func:`grammar_prompts` (cycling through a set when it has fewer: the
    held-out set has 64). Deterministic from ``seed``."""
    if isinstance(num_per_set, bool) or not isinstance(num_per_set, int) or num_per_set < 1:
        raise ValueError(f"num_per_set must be a positive int, got {num_per_set!r}")
    sets = {}
    for name in ("in_distribution", "held_out"):
        pool = grammar_prompts(name)
        rng = np.random.default_rng(mix_seed(seed, "prompts", name))
        order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-num_per_set // len(pool)))])
        sets[name] = [pool[i] for i in order[:num_per_set]]
    return sets


# ---- rendering ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _glyphs() -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's digits: ``(1797, 1, 8, 8)`` in [0, 1] and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - sklearn is part of the train extra
        raise ImportError("the 'captioned-digits' data set needs scikit-learn: pip install scikit-learn") from err
    digits = load_digits()
    return torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None], digits.target.astype(np.int64)


def draw_specs(
    rng: np.random.Generator, glyph: np.ndarray, fg: np.ndarray | None = None, bg: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Random drawing parameters for the glyph indices ``glyph`` ``(n,)``: colours (``fg`` / ``bg`` palette
    indices, ``-1`` or ``None``: drawn, a drawn fg never making a held-out pair), their jittered RGB, box size,
    position, rotation and stroke threshold. ``rng`` is consumed in a fixed order (deterministic)."""
    n = len(glyph)
    digit = _glyphs()[1][glyph]
    fg = np.full(n, -1) if fg is None else np.asarray(fg, np.int64).copy()
    bg = np.full(n, -1) if bg is None else np.asarray(bg, np.int64).copy()
    u_fg, u_bg = rng.random(n), rng.random(n)
    allowed = np.ones((n, 8), bool)  # colours a drawn fg may take: not bg, not the digit's held-out colour
    allowed[np.flatnonzero(bg >= 0), bg[bg >= 0]] = False
    held = np.array([_HELD_FG.get(d, -1) for d in range(10)])[digit]
    allowed[np.flatnonzero(held >= 0), held[held >= 0]] = False
    pick = (u_fg * allowed.sum(1)).astype(np.int64)  # the pick-th allowed colour
    fg = np.where(fg < 0, (allowed.cumsum(1) <= pick[:, None]).sum(1), fg)
    b = (u_bg * 7).astype(np.int64)
    bg = np.where(bg < 0, b + (b >= fg), bg)
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, (n, 2, 3))
    palette = np.asarray(list(PALETTE.values()))
    size = rng.uniform(20 / 32, 26 / 32, n)
    return {
        "glyph": np.asarray(glyph, np.int64), "digit": digit, "fg": fg, "bg": bg,
        "fg_rgb": np.clip(palette[fg] + jitter[:, 0], 0, 255) / 255.0,
        "bg_rgb": np.clip(palette[bg] + jitter[:, 1], 0, 255) / 255.0,
        "size": size,
        "x": 2 / 32 + rng.random(n) * (28 / 32 - size),  # box corner: >= 2 px from each border (at 32 px)
        "y": 2 / 32 + rng.random(n) * (28 / 32 - size),
        "angle": np.deg2rad(rng.uniform(-8, 8, n)),
        "threshold": rng.uniform(0.3, 0.45, n),
    }  # fmt: skip


def render(specs: dict[str, np.ndarray], resolution: int = 32, index: Any = slice(None)) -> torch.Tensor:
    """Draw the images of ``specs`` (from :func:`draw_specs`; ``index`` picks some): ``(n, 3, R, R)`` in [-1, 1],
    quantised to 8 bits."""
    s = {k: torch.as_tensor(np.atleast_1d(v[index])) for k, v in specs.items()}
    size, cos, sin = s["size"], torch.cos(s["angle"]), torch.sin(s["angle"])
    centre = torch.stack([s["x"], s["y"]], 1) + size[:, None] / 2
    rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1) / size[:, None, None]
    # output coords u (image, [-1, 1]) -> glyph coords p = rot (u - c): the glyph box spans p in [-1, 1]
    theta = torch.cat([rot, -(rot @ (2 * centre - 1)[..., None])], 2).float()
    grid = torch.nn.functional.affine_grid(theta, [len(size), 1, resolution, resolution], align_corners=False)
    glyph = _glyphs()[0][s["glyph"]]
    ink = torch.nn.functional.grid_sample(glyph, grid, mode="bicubic", padding_mode="zeros", align_corners=False)
    mask = ((ink - s["threshold"].float()[:, None, None, None]) / 0.2 + 0.5).clamp(0, 1)  # soft stroke edge
    fg, bg = s["fg_rgb"].float()[..., None, None], s["bg_rgb"].float()[..., None, None]
    image = (bg * 255 + (fg - bg) * 255 * mask).round_()
    return image.div_(127.5).sub_(1)


# ---- the data set ---------------------------------------------------------------------------------------------
class CaptionedDigitsDataset(TrainingDataset):
    """Coloured digits with captions (see the module docstring), rendered on demand.

    Item ``i``: ``{"images": (3, R, R) float in [-1, 1], "labels": digit, "captions": str, "fg": int,
    "bg": int}`` (``fg`` / ``bg``: indices into :data:`COLOR_NAMES`). ``split="train"`` never holds a
    :data:`HELD_OUT_PAIRS` image; ``split="held_out"`` holds only those. The glyphs are used evenly (a fresh
    permutation of them per pass). ``ds.digits`` / ``ds.fg`` / ``ds.bg`` ``(N,)`` and ``ds.captions`` hold
    every item's labels; ``ds.images(indices)`` renders many at once.
    """

    num_classes = 10
    class_names = [str(i) for i in range(10)]
    channels = 3

    def __init__(
        self,
        split: str = "train",
        num_images: int | None = None,
        seed: int = 0,
        resolution: int = 32,
        channels: int = 3,
        random_flip: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        num_images = DEFAULT_SIZES[split] if num_images is None else num_images
        for name, value, low in (("num_images", num_images, 1), ("resolution", resolution, 8), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if channels != 3:
            raise ValueError(f"channels must be 3 for captioned-digits (the colours are the point), got {channels!r}")
        if random_flip:
            raise ValueError("random_flip must be False for captioned-digits: a flipped digit no longer fits its text")
        self.split, self.seed, self.resolution = split, int(seed), int(resolution)
        labels = _glyphs()[1]
        pool = np.flatnonzero(np.isin(labels, list(_HELD_FG)) if split == "held_out" else np.ones_like(labels))
        passes = -(-num_images // len(pool))  # each pass visits every glyph once, in its own order
        order = [np.random.default_rng(mix_seed(seed, "captioned-digits", split, k)).permutation(pool) for k in
                 range(passes)]  # fmt: skip
        glyph = np.concatenate(order)[:num_images]
        parts, template, word = [], [], []
        for start in range(0, num_images, CHUNK):  # whole chunks, cut: the first items do not depend on num_images
            rng = np.random.default_rng(mix_seed(seed, "captioned-digits", split, "chunk", start))
            g = np.resize(glyph[start : start + CHUNK], CHUNK)
            spec = draw_specs(rng, g, [_HELD_FG[int(d)] for d in labels[g]] if split == "held_out" else None)
            keep = min(CHUNK, num_images - start)
            parts.append({k: v[:keep] for k, v in spec.items()})
            template.append(rng.choice(len(TEMPLATES), CHUNK, p=TEMPLATE_WEIGHTS)[:keep])
            word.append(rng.random(CHUNK)[:keep] < 0.5)
        self.specs = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        template, word = np.concatenate(template), np.concatenate(word)
        self.digits = torch.from_numpy(self.specs["digit"])
        self.fg, self.bg = torch.from_numpy(self.specs["fg"]), torch.from_numpy(self.specs["bg"])
        self.captions = [
            make_caption(int(d), COLOR_NAMES[f] if t < 2 else None, COLOR_NAMES[b] if t % 2 == 0 else None, bool(w))
            for d, f, b, t, w in zip(self.specs["digit"], self.specs["fg"], self.specs["bg"], template, word)
        ]

    def __len__(self) -> int:
        return len(self.captions)

    def images(self, indices: Any = None) -> torch.Tensor:
        """``(n, 3, R, R)`` images of ``indices`` (a sequence / tensor of ints; None: all, mind the memory)."""
        index = slice(None) if indices is None else np.asarray(torch.as_tensor(indices), np.int64).reshape(-1)
        return render(self.specs, self.resolution, index)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, _ = _generator_for(key)  # nothing random per visit: the same caption every epoch (cacheable)
        index = self._check_index(index)
        return {
            "images": render(self.specs, self.resolution, [index])[0],
            "labels": int(self.digits[index]),
            "captions": self.captions[index],
            "fg": int(self.fg[index]),
            "bg": int(self.bg[index]),
        }


def collate_captioned(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items -> ``{"images": (B, 3, R, R), "labels" / "fg" / "bg": (B,) long, "captions": list of B str}``."""
    return {
        "images": torch.stack([it["images"] for it in items]),
        **{k: torch.tensor([it[k] for it in items], dtype=torch.long) for k in ("labels", "fg", "bg")},
        "captions": [it["captions"] for it in items],
    }
