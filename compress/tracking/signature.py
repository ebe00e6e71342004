"""The MLflow signature of an ONNX model, read from its graph: one named tensor per graph input
and output, typed as the graph types it, with -1 for every symbolic dimension (the batch).

A model server enforces it: a request with a missing input, a wrong shape or a value that does
not convert to the input's type is refused (400) instead of reaching onnxruntime. A table
model's raw inputs (compress/export/preprocess.py) become one tensor of shape (-1,) per column,
strings as numpy `object`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto


def _numpy_dtype(elem_type: int) -> np.dtype:
    if elem_type == TensorProto.STRING:
        return np.dtype(object)
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        name = TensorProto.DataType.Name(elem_type)
        raise ValueError(f"ONNX tensor type {name} has no numpy type for an MLflow "
                         "signature") from None


def graph_tensors(values) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, numpy dtype, shape with -1 for symbolic or unknown dims) of ONNX value infos."""
    out = []
    for value in values:
        if not value.type.HasField("tensor_type"):
            raise ValueError(f"ONNX input/output {value.name!r} is not a tensor; an MLflow "
                             "signature needs tensors")
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                      for d in tensor.shape.dim)
        out.append((value.name, _numpy_dtype(tensor.elem_type), shape))
    return out


def model_inputs(model: onnx.ModelProto) -> list:
    """The graph inputs a caller feeds (an initializer listed as an input is not one)."""
    initializers = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def onnx_signature(model: onnx.ModelProto):
    """mlflow.models.ModelSignature of the graph's inputs and outputs (named TensorSpecs)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def schema(values) -> Schema:
        return Schema([TensorSpec(dtype, shape, name)
                       for name, dtype, shape in graph_tensors(values)])

    return ModelSignature(inputs=schema(model_inputs(model)), outputs=schema(model.graph.output))
