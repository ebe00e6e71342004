"""Registered architectures. Importing this package registers the built-in models."""

from compress.models import convnets, lenet, mlp, resnet_cifar, torchvision_models  # noqa: F401
from compress.models.base import build_model, output_width  # noqa: F401
