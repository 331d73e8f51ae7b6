from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from torchdiffusion import BaseOutput, make_image_grid, randn_tensor
from torchdiffusion.utils.images import check_output_type, numpy_to_pil, pil_to_tensor, postprocess, pt_to_numpy
from torchdiffusion.utils.torch_utils import check_generator


@dataclass
class Out(BaseOutput):
    sample: torch.Tensor
    extra: torch.Tensor | None = None


def test_base_output_views():
    x = torch.ones(2)
    out = Out(sample=x)
    assert out.sample is x and out[0] is x and out["sample"] is x and out.to_tuple() == (x,)
    assert len(out.to_tuple()) == 1  # None fields are left out
    out.extra = torch.zeros(1)
    assert len(out.to_tuple()) == 2


def test_randn_tensor_per_sample_generators_are_batch_invariant():
    batch = randn_tensor((3, 2, 4), [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = randn_tensor((1, 2, 4), [torch.Generator().manual_seed(2)])
    assert torch.equal(batch[1], alone[0])
    single = randn_tensor((2, 3), torch.Generator().manual_seed(0), dtype=torch.float64)
    assert single.dtype == torch.float64
    assert torch.equal(single.float(), torch.randn(2, 3, generator=torch.Generator().manual_seed(0)))


def test_check_generator_errors():
    with pytest.raises(ValueError, match="generator"):
        check_generator([torch.Generator()], 2)
    with pytest.raises(TypeError, match="generator"):
        check_generator("seed", 1)
    with pytest.raises(TypeError, match="generator"):
        check_generator([1, 2], 2)


def test_image_conversions():
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    arr = postprocess(x, "np")
    assert arr.shape == (2, 4, 5, 3) and arr.min() >= 0 and arr.max() <= 1
    pil = postprocess(x, "pil")
    assert len(pil) == 2 and pil[0].size == (5, 4)
    back = pil_to_tensor(pil)
    torch.testing.assert_close(back, postprocess(x, "pt"), atol=1 / 255, rtol=0)
    gray = numpy_to_pil(np.zeros((4, 4, 1)))
    assert gray[0].mode == "L"
    assert pt_to_numpy(torch.zeros(1, 3, 2, 2)).shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="output_type"):
        check_output_type("tiff")


def test_make_image_grid():
    images = [Image.new("RGB", (4, 3), (i * 40, 0, 0)) for i in range(6)]
    grid = make_image_grid(images, rows=2, cols=3)
    assert grid.size == (12, 6) and grid.getpixel((4, 0)) == (40, 0, 0) and grid.getpixel((0, 3)) == (120, 0, 0)
    assert make_image_grid(images, 3, 2, resize=8).size == (16, 24)
    with pytest.raises(ValueError, match="rows"):
        make_image_grid(images, 0, 3)
    with pytest.raises(ValueError, match="images"):
        make_image_grid(images, 2, 2)
    with pytest.raises(TypeError, match="images"):
        make_image_grid([np.zeros((2, 2))], 1, 1)
