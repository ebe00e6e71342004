"""Registered architectures. Importing this package registers the built-in models and the
prefixes that resolve the user's models: `torchvision:NAME`, `py:pkg.mod:factory`,
`file:path.py:factory`, and `models:/NAME/VERSION` (the MLflow registry)."""

from compress.models import convnets, lenet, mlp, resnet_cifar, torchvision_models, user  # noqa: F401
from compress.models.base import build_model, output_width  # noqa: F401
from compress.registry import MODELS


def _registered(rest: str):
    # MLflow is an edge: imported only when a models:/ name is resolved.
    from compress.tracking.model_source import entry
    return entry(rest)


MODELS.register_prefix("models", _registered)
