"""compress: find sparse sub-networks, track them, ship them as structurally pruned ONNX."""

__version__ = "0.1.0"
