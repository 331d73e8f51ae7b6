"""CPU convolution and normalisation kernels shared by the layers, each the same math as its plain PyTorch spelling.

* :func:`conv2d` runs an ``nn.Conv2d`` with its weight in the input's memory format, so a channels-last feature
  map reaches oneDNN's NHWC kernels (brgconv) instead of a reorder + blocked kernel + reorder; weights stay NCHW
  in the state dict, the channels-last copy is cached while no autograd graph is recorded.
* :func:`conv2d` also runs wide 3x3 convolutions (>= 192 input channels: the Stable Diffusion widths, the low
  levels of the tutorials' UNets) in Winograd form F(2x2, 3x3) (Lavin & Gray 2016) during inference: 16
  elementwise-transformed copies of the input, one batched GEMM (16 matrices, 4/9 of the multiply-adds), then the
  inverse transform. On narrow layers the transforms cost more than they save, so those stay direct.
* :func:`upsample_conv` is ``conv3x3(nearest_x2(x))`` computed on the low-resolution map as four 2x2 "phase"
  convolutions (sub-pixel form): the same sums with 4/9 of the multiply-adds.
* :func:`group_norm_act` is GroupNorm then an activation, the activation applied in place when no graph is
  recorded (one feature-map allocation fewer); channels-last maps of 64-256 pixels take a reduction-based
  GroupNorm (PyTorch's channels-last kernel is slow there). :func:`residual_add` reuses memory for residual sums.
* :func:`use_channels_last` says whether a model should carry its feature maps channels-last: at inference on the
  CPU, yes; while a graph is recorded through the model (training), the input keeps its layout (NCHW from the
  trainer), because oneDNN's NHWC backward kernels lose on narrow maps (see the function).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

_CL = torch.channels_last


def is_channels_last(x: torch.Tensor) -> bool:
    """True when a 4-D tensor is laid out NHWC (and is not also plain contiguous, as when C == 1 or H == W == 1)."""
    return x.ndim == 4 and x.is_contiguous(memory_format=_CL) and not x.is_contiguous()


def records_graph(model: nn.Module, *tensors: torch.Tensor | None) -> bool:
    """Whether autograd records a graph through ``model`` (a parameter that requires grad: training, LoRA
    included) or through one of ``tensors``."""
    if not torch.is_grad_enabled():
        return False
    return any(t is not None and t.requires_grad for t in tensors) or any(p.requires_grad for p in model.parameters())


def use_channels_last(x: torch.Tensor, model: nn.Module | None = None) -> bool:
    """The layout policy: channels-last feature maps on the CPU (oneDNN's fastest forward convolutions), except
    while autograd records a graph through ``model``: then the caller keeps ``x``'s own layout. On an AVX-512 CPU
    oneDNN's NHWC backward kernels were 1.3-1.6x slower than the NCHW ones per 3x3 conv on 2x2-4x4 maps, and an SD
    1.5-shaped UNet's whole backward 1.6x slower (``benchmarks/t2i_train_throughput.py``)."""
    return x.device.type == "cpu" and x.ndim == 4 and (model is None or not records_graph(model, x))


def needs_graph(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records ops on any of ``tensors`` (then caches and in-place shortcuts are off)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


_CACHE_NAMES = ("_td_cl_weight", "_td_winograd_kernels", "_td_phase_kernels")


def clear_weight_caches(model: nn.Module) -> None:
    """Forget the cached weight copies of ``model``'s layers (needed after in-place edits through ``.data``, which
    do not bump the version counter the cache keys on, e.g. peft's LoRA merges)."""
    for module in model.modules():
        for name in _CACHE_NAMES:
            module.__dict__.pop(name, None)


def _cached(module: nn.Module, name: str, weight: torch.Tensor, make) -> torch.Tensor:
    """``make(weight)``, remembered on ``module`` until the weight is modified, moved or replaced."""
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
    hit = module.__dict__.get(name)
    if hit is None or hit[0] != key:
        hit = (key, make(weight))
        module.__dict__[name] = hit
    return hit[1]


def _cl_weight(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=_CL)


# When Winograd F(2x2, 3x3) pays (measured with benchmarks/conv_kernels.py; rerun it before moving these): its
# GEMMs reduce over the input channels only, so they need a wide input to run near oneDNN's direct kernel (which
# reduces over 9x as many); narrow outputs pay only on small maps (on large ones the transforms' memory passes
# dominate, and above 64x64 they do for every width, as in a VAE's high-resolution levels); and ~20 small ops need
# enough work to amortise them. On 4x4-8x8 maps of wide layers the direct kernel is itself slow, and Winograd wins.
@dataclass(frozen=True)
class WinogradRules:
    """Which 3x3 layers take the Winograd path on one kind of CPU (see :func:`_use_winograd`)."""

    min_in_channels: int
    min_out_channels: int
    wide_out_channels: int  # outputs narrower than this take Winograd only on maps of <= small_map pixels
    small_map: int = 256
    min_size: int = 4
    max_map: int = 64 * 64  # pixels per image
    min_macs: int = 100_000_000  # multiply-adds of the direct convolution


WINOGRAD_RULES = {
    # 2-core AVX2 EPYC: direct kernel ~80 GMAC/s, the Winograd GEMM 45-55; Winograd wins from ~192-256 channels.
    "AVX2": WinogradRules(min_in_channels=192, min_out_channels=128, wide_out_channels=256),
    # 2-core Zen 5 with AVX-512: direct 230-280 GMAC/s up to 640 channels (Winograd 1.1-1.3x slower there), but
    # 70-160 GMAC/s for 1280-channel layers on <= 16x16 maps (5 on 4x4): Winograd wins only at SD's deepest widths
    # (0.4-0.7x at batch 2; December 2026).
    "AVX512": WinogradRules(min_in_channels=1024, min_out_channels=1024, wide_out_channels=1024),
}
WINOGRAD = WINOGRAD_RULES["AVX512" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "AVX2"]
# Kernel transform G (4x3) of F(2, 3): U = G g G^T per (out, in) channel pair.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def _winograd_kernels(weight: torch.Tensor) -> torch.Tensor:
    """``(O, I, 3, 3)`` -> the 16 transformed kernels ``(G g G^T)[a, b]`` as a batch of matrices ``(16, I, O)``
    (index ``4 * a + b``), ready for ``torch.bmm``."""
    g = torch.tensor(_WINOGRAD_G, dtype=torch.float64, device=weight.device)
    kernels = torch.einsum("ar,oirs,bs->abio", g, weight.double(), g).to(weight.dtype)
    return kernels.reshape(16, weight.shape[1], weight.shape[0]).contiguous()


def _use_winograd(conv: nn.Conv2d, x: torch.Tensor, rules: WinogradRules | None = None) -> bool:
    """Whether ``conv(x)`` takes the Winograd path under ``rules`` (default :data:`WINOGRAD`, this CPU's); the
    caller checks that no graph is recorded."""
    rules = rules or WINOGRAD
    if not (
        conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.in_channels >= rules.min_in_channels
        and conv.out_channels >= rules.min_out_channels
        and x.dtype == torch.float32
        and x.device.type == "cpu"
        and is_channels_last(x)
    ):
        return False
    batch, _, height, width = x.shape
    pixels = height * width
    return (
        height % 2 == 0
        and width % 2 == 0
        and min(height, width) >= rules.min_size
        and pixels <= rules.max_map
        and (conv.out_channels >= rules.wide_out_channels or pixels <= rules.small_map)
        and batch * pixels * conv.in_channels * conv.out_channels * 9 >= rules.min_macs
    )


def _winograd_conv3x3(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 3x3, stride-1, padding-1 conv of a channels-last ``(B, C, H, W)`` map (H, W even) by F(2x2, 3x3):
    input tiles ``d`` (4x4, stride 2) become ``B^T d B``, each of the 16 components (a matrix of tiles x C) is
    multiplied by its transformed kernel in one batched GEMM, and ``A^T m A`` gives each 2x2 output tile. Same
    sums up to round-off (~1e-6 relative in fp32). Returns ``(B, O, H, W)`` channels-last."""
    batch, channels, height, width = x.shape
    out_channels = conv.out_channels
    th, tw = height // 2, width // 2
    kernels = _cached(conv, "_td_winograd_kernels", conv.weight, _winograd_kernels)
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H + 2, W + 2, C)

    def rows(i: int) -> torch.Tensor:  # padded rows i, i + 2, ... (one per tile row)
        return padded[:, i : i + height : 2]

    # B^T over rows: (d0 - d2, d1 + d2, d2 - d1, d1 - d3), then the same over columns, component-major
    row_parts = (rows(0) - rows(2), rows(1) + rows(2), rows(2) - rows(1), rows(1) - rows(3))
    tiles = torch.empty(4, 4, batch, th, tw, channels, dtype=x.dtype, device=x.device)
    for a, part in enumerate(row_parts):
        c0, c1, c2, c3 = (part[:, :, j : j + width : 2] for j in range(4))
        torch.sub(c0, c2, out=tiles[a, 0])
        torch.add(c1, c2, out=tiles[a, 1])
        torch.sub(c2, c1, out=tiles[a, 2])
        torch.sub(c1, c3, out=tiles[a, 3])
    m = torch.bmm(tiles.view(16, -1, channels), kernels).view(4, 4, batch, th, tw, out_channels)
    # A^T over rows: (m0 + m1 + m2, m1 - m2 - m3), then over columns into the interleaved output
    out = torch.empty(batch, th, 2, tw, 2, out_channels, dtype=x.dtype, device=x.device)
    for i, row in enumerate(((m[0] + m[1]).add_(m[2]), (m[1] - m[2]).sub_(m[3]))):
        torch.add(row[0], row[1], out=out[:, :, i, :, 0]).add_(row[2])
        torch.sub(row[1], row[2], out=out[:, :, i, :, 1]).sub_(row[3])
    out = out.view(batch, height, width, out_channels)
    if conv.bias is not None:
        out.add_(conv.bias)
    return out.permute(0, 3, 1, 2)


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with the weight matched to ``x``'s memory format (same values, faster NHWC path on CPU); wide
    3x3 layers run in Winograd form during inference (see the module docstring). A layer wrapped by an adapter
    (peft's LoRA ``Conv2d`` is not an ``nn.Conv2d``) runs as its own module, so the adapter takes part."""
    if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
        return conv(x)
    weight = conv.weight
    if is_channels_last(x) and weight.shape[-1] * weight.shape[-2] > 1:
        if needs_graph(weight, x, conv.bias):
            weight = _cl_weight(weight)
        elif _use_winograd(conv, x):
            return _winograd_conv3x3(conv, x)
        else:
            weight = _cached(conv, "_td_cl_weight", weight, _cl_weight)
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 kernel ``(O, I, 3, 3)`` applied after nearest x2 upsampling, as four 2x2 kernels on the low-res map.

    Output row ``2i`` sees low-res rows ``(i-1, i)`` with taps ``(w0, w1 + w2)``; row ``2i+1`` sees ``(i, i+1)``
    with ``(w0 + w1, w2)``; likewise for columns. Result ``(4 * O, I, 2, 2)``, phases ordered (row, col) =
    00, 01, 10, 11; channels-last for the NHWC kernel.
    """
    w0, w1, w2 = weight.unbind(2)
    rows = (torch.stack([w0, w1 + w2], 2), torch.stack([w0 + w1, w2], 2))
    phases = []
    for r in rows:
        c0, c1, c2 = r.unbind(3)
        phases += [torch.stack([c0, c1 + c2], 3), torch.stack([c0 + c1, c2], 3)]
    return torch.cat(phases, 0).contiguous(memory_format=_CL)


def upsample_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor | None:
    """``conv(nearest_x2(x))`` in sub-pixel form for a channels-last ``x`` ``(B, C, H, W)``, or ``None`` when the
    shortcut does not apply (then the caller upsamples and convolves as usual).

    Applies to a 3x3, stride-1, padding-1, ungrouped conv on maps of at least 4x4; each output phase is its own
    2x2 convolution (no wasted border rows), interleaved into a channels-last result. Under autograd (training)
    the phase kernels are rebuilt from the weight each call and the phases are stacked, so gradients reach
    ``conv.weight``/``conv.bias`` and ``x``, and the backward pass saves the same 5/9 of the multiply-adds.
    """
    if (
        not isinstance(conv, nn.Conv2d)  # e.g. wrapped by a LoRA adapter: the caller runs the module
        or not is_channels_last(x)
        or x.shape[-1] < 4
        or x.shape[-2] < 4
        or conv.kernel_size != (3, 3)
        or conv.stride != (1, 1)
        or conv.padding != (1, 1)
        or conv.dilation != (1, 1)
        or conv.groups != 1
        or conv.padding_mode != "zeros"
    ):
        return None
    batch, _, height, width = x.shape
    out_channels = conv.out_channels
    graph = needs_graph(x, conv.weight, conv.bias)
    kernels = _phase_kernels(conv.weight) if graph else _cached(conv, "_td_phase_kernels", conv.weight, _phase_kernels)

    def phase(a: int, b: int) -> torch.Tensor:
        # phase (a, b) reads low-res rows (i - 1 + a, i + a) and columns (j - 1 + b, j + b)
        group = (2 * a + b) * out_channels
        return F.conv2d(F.pad(x, (1 - b, b, 1 - a, a)), kernels[group : group + out_channels], conv.bias)

    if graph:
        rows = [torch.stack([phase(a, 0).permute(0, 2, 3, 1), phase(a, 1).permute(0, 2, 3, 1)], 3) for a in (0, 1)]
        grid = torch.stack(rows, 2)  # (B, H, 2, W, 2, O)
        return grid.reshape(batch, 2 * height, 2 * width, out_channels).permute(0, 3, 1, 2)
    out = torch.empty(batch, out_channels, 2 * height, 2 * width, dtype=x.dtype, device=x.device, memory_format=_CL)
    grid = out.permute(0, 2, 3, 1).view(batch, height, 2, width, 2, out_channels)
    for a in (0, 1):
        for b in (0, 1):
            grid[:, :, a, :, b, :] = phase(a, b).permute(0, 2, 3, 1)
    return out


def _group_norm_nhwc(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """GroupNorm of a channels-last ``(B, C, H, W)`` map by channel-wise reductions over the pixels (two-pass
    variance: mean first, then the centred sum of squares). On mid-sized maps PyTorch's channels-last GroupNorm
    kernel is several times slower than this."""
    batch, channels, height, width = x.shape
    per_group = channels // groups
    count = height * width * per_group
    tokens = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    mean = tokens.sum(1).view(batch, groups, per_group).sum(-1, keepdim=True).div_(count)
    centred = tokens - mean.expand(batch, groups, per_group).reshape(batch, 1, channels)
    var = (centred * centred).sum(1).view(batch, groups, per_group).sum(-1, keepdim=True).div_(count)
    scale = torch.rsqrt(var.add_(eps))
    if weight is not None:
        scale = scale * weight.view(1, groups, per_group)
    centred.mul_(scale.expand(batch, groups, per_group).reshape(batch, 1, channels))
    if bias is not None:
        centred.add_(bias.view(1, 1, channels))
    return centred.view(batch, height, width, channels).permute(0, 3, 1, 2)


def group_norm_act(x: torch.Tensor, norm: nn.GroupNorm, act: nn.Module | None) -> torch.Tensor:
    """``act(norm(x))``; SiLU runs in place on the normalised copy when no graph is being recorded."""
    graph = needs_graph(x, norm.weight, norm.bias)
    if not graph and is_channels_last(x) and 64 <= x.shape[-1] * x.shape[-2] <= 256 and x.is_floating_point():
        out = _group_norm_nhwc(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    else:
        out = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    if act is None:
        return out
    if type(act) is nn.SiLU and not graph:
        return F.silu(out, inplace=True)
    return act(out)


def _broadcasts_into(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target`` (cheaper than ``torch.broadcast_shapes`` in
    the hot loop)."""
    if shape == target:
        return True
    if len(shape) > len(target):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(shape), reversed(target)))


def residual_add(x: torch.Tensor, residual: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``(x + residual) / scale`` (``residual`` may broadcast), reusing ``x``'s memory when no graph is recorded
    (``x`` must be a temporary the caller owns)."""
    inplace_ok = x.dtype == residual.dtype and _broadcasts_into(residual.shape, x.shape)
    if not inplace_ok or needs_graph(x, residual):
        # the first operand decides a sum's memory format: keep the residual stream's (``x`` is often a permuted
        # token view, channels-last in memory, which would turn an NCHW training graph channels-last)
        out = residual + x if residual.shape == x.shape else x + residual
        return out / scale if scale != 1 else out
    out = x.add_(residual)
    return out.div_(scale) if scale != 1 else out
