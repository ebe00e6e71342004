"""`torchvision:NAME`: any classification model builder of torchvision.models, random init.

`model.name: torchvision:resnet18` builds `torchvision.models.get_model("resnet18",
weights=None, num_classes=<classes>)` with a seeded random init; trained weights come only
from a file (`model.weights`, e.g. torchvision's ImageNet weights saved elsewhere, with
`model.reset_head` for a new class count). Nothing is ever downloaded. torchvision is imported only when such a name is resolved
(importing compress.models stays light).

Adjustments so every builder returns plain logits for the dataset's images:
- googlenet / inception_v3: no auxiliary heads (aux_logits=False), their documented init.
- vit_*: image_size is set to the dataset's (square) image size; maxvit_t: input_size likewise.
- The built model runs once on a zero image (eval mode, no grad) so an input it cannot take
  (e.g. 32x32 into alexnet) fails at build time with one line instead of mid-training.
"""

from __future__ import annotations

import functools

import torch
from pydantic import BaseModel, model_validator

from compress.vocab import OPTIONS
from torch import nn

from compress.errors import UserError
from compress.models.convnets import require_image
from compress.registry import MODELS, Entry

EXAMPLES = "resnet18, vgg16_bn, mobilenet_v2"
# Smallest inputs some builders accept; the rest run on 32x32 CIFAR images.
EXAMPLE_SHAPES = {"alexnet": [3, 64, 64], "inception_v3": [3, 75, 75], "maxvit_t": [3, 224, 224]}
NO_AUX = {"aux_logits": False, "init_weights": True}


class TorchvisionParams(BaseModel):
    """No options of its own: a seeded random init, or the file in model.weights."""

    model_config = OPTIONS

    @model_validator(mode="before")
    @classmethod
    def _no_weights(cls, data):
        if isinstance(data, dict) and "pretrained" in data:
            raise ValueError("pretrained weights are never downloaded: torchvision models start "
                             "from a random init, or from a weights file (model.weights=PATH)")
        return data


def _torchvision_models():
    try:
        import torchvision.models as tvm
    except ImportError:
        raise UserError("torchvision models need torchvision: pip install 'compress[vision]'") from None
    return tvm


def _builder_kwargs(name: str, in_shape: tuple[int, int, int]) -> dict:
    _, h, w = in_shape
    if name in ("googlenet", "inception_v3"):
        return dict(NO_AUX)
    if name.startswith("vit_"):
        if h != w:
            raise UserError(f"torchvision:{name} needs square images; dataset gives {in_shape}")
        return {"image_size": h}
    if name == "maxvit_t":
        return {"input_size": (h, w)}
    return {}


def build_torchvision(name: str, p: TorchvisionParams | None, in_shape: tuple[int, ...],
                      out_features: int) -> nn.Module:
    shape = require_image(f"torchvision:{name}", in_shape)
    if shape[0] != 3:
        raise UserError(f"torchvision:{name} needs 3-channel images (3, H, W); "
                        f"dataset gives {tuple(in_shape)}")
    tvm = _torchvision_models()
    try:
        model = tvm.get_model(name, weights=None, num_classes=out_features,
                              **_builder_kwargs(name, shape))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape))
        model.train(was_training)
    except (RuntimeError, ValueError, AssertionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"torchvision:{name} cannot take {tuple(in_shape)} images: {first}") from None
    return model


@functools.lru_cache(maxsize=None)
def resolve_torchvision(rest: str) -> Entry:
    tvm = _torchvision_models()
    if rest not in tvm.list_models(module=tvm):
        raise UserError(f"unknown torchvision model {rest!r}; e.g. {EXAMPLES} "
                        "(see torchvision.models.list_models())")
    return Entry(f"torchvision:{rest}", obj=functools.partial(build_torchvision, rest),
                 params=TorchvisionParams,
                 summary=f"torchvision.models.{rest}, random init (never downloads weights)",
                 defaults={"example_shape": EXAMPLE_SHAPES.get(rest, [3, 32, 32])})


MODELS.register_prefix("torchvision", resolve_torchvision, params=TorchvisionParams,
                       summary="any classifier of torchvision.models by name, e.g. "
                               f"torchvision:resnet18 ({EXAMPLES}); random init")
