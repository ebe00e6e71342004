"""Registered datasets. Importing this package registers the built-in ones."""

from compress.data import cifar, digits, imagefolder, mnist, table, xor  # noqa: F401
from compress.data.base import DataBundle, Split, load_dataset  # noqa: F401
