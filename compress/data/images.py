"""Decoding image files into model inputs: the one definition training, evaluation and a
deployment (see `load_image`) share.

Evaluation view: the image (converted to 1 or 3 channels) is scaled so that it covers the
target size and center-cropped to it (torchvision's Resize + CenterCrop for square sizes), in
one bilinear, antialiased PIL resize of the crop box; pixels become float32 in [0, 1], then
(x - mean) / std per channel.
Training view with `augment: standard`: a random resized crop (area fraction in `scale`, aspect
ratio in 3/4..4/3, as torchvision's RandomResizedCrop) and a horizontal flip with p = 0.5,
drawn from a generator seeded by (epoch seed, sample index), so the result does not depend on
which worker decodes the sample.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from compress.data.base import BadSample
from compress.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif",
                              ".tiff", ".ppm", ".pgm", ".pbm"})
ASPECT = (3 / 4, 4 / 3)
Box = tuple[float, float, float, float]


def pil():
    try:
        from PIL import Image
    except ImportError:
        raise UserError("image folders are decoded with Pillow: pip install 'compress[vision]'") \
            from None
    return Image


def open_image(path: Path, channels: int):
    """The decoded image in mode L (1 channel) or RGB (3); BadSample naming the file otherwise."""
    Image = pil()
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BadSample(f"cannot decode image {path}: {_reason(e)} (remove or replace the "
                        "file)") from None


def _reason(e: Exception) -> str:
    if isinstance(e, pil().UnidentifiedImageError):
        return "not an image file Pillow can read"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels (a check made up
    front, in this process: UserError naming the file)."""
    Image = pil()
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path}: {_reason(e)} (remove or replace the "
                        "file)") from None
    return h, w


def center_box(w: int, h: int, out_h: int, out_w: int) -> Box:
    """The largest centered region of a w x h image with the output's aspect ratio."""
    scale = min(w / out_w, h / out_h)
    cw, ch = out_w * scale, out_h * scale
    return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)


def random_box(w: int, h: int, rng: np.random.Generator, scale: Sequence[float]) -> Box:
    """A random region covering a fraction `scale` of the area with aspect ratio in 3/4..4/3;
    after ten misses, the whole image's central region of the nearest allowed ratio."""
    area = w * h
    log_lo, log_hi = math.log(ASPECT[0]), math.log(ASPECT[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return (left, top, left + cw, top + ch)
    ratio = min(max(w / h, ASPECT[0]), ASPECT[1])
    cw, ch = (w, round(w / ratio)) if w / h < ratio else (round(h * ratio), h)
    cw, ch = min(cw, w), min(ch, h)
    return ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)


def to_tensor(img, size: tuple[int, int], box: Box, flip: bool = False) -> torch.Tensor:
    """The box of `img` resized to size (h, w) as a float32 (C, h, w) tensor in [0, 1]."""
    Image = pil()
    out = img.resize((size[1], size[0]), Image.Resampling.BILINEAR, box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = torch.from_numpy(np.asarray(out, dtype=np.uint8).copy())
    arr = arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1)
    return arr.to(torch.float32).div_(255.0)


def channel_tensor(values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Per-channel values as a float32 (C, 1, 1) tensor, to broadcast over an image."""
    return torch.as_tensor(values, dtype=torch.float32).reshape(-1, 1, 1)


def normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(x - mean) / std per channel, in place (mean, std: sequences or channel tensors)."""
    return x.sub_(channel_tensor(mean)).div_(channel_tensor(std))


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of one sample's augmentation: independent streams per (seed, index)."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, index])


def load_image(path: str | Path, preprocess: dict) -> np.ndarray:
    """One image file as the exported model's input, float32 (C, H, W): what a deployment
    does before calling the ONNX model. `preprocess` is the stage's recorded
    `data_preprocess` (also in the ONNX file's metadata as compress.preprocess)."""
    size, channels = tuple(preprocess["size"]), preprocess["channels"]
    img = open_image(Path(path), channels)
    x = to_tensor(img, size, center_box(img.size[0], img.size[1], *size))
    return normalise(x, preprocess["mean"], preprocess["std"]).numpy()
