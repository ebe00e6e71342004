"""A table's preprocessing as ONNX nodes in front of the network: the served model takes RAW
rows, one input per feature column named after it (shape [batch]), typed as the column was
read (double, long, boolean: numeric; string or whole numbers: categorical).

    numeric columns -> Cast(double) -> Reshape([-1, 1]) -> Concat -> Sub(mean) -> Div(std) -> Cast
    categorical     -> ai.onnx.ml OneHotEncoder(train categories, zeros=1: unseen -> all 0)
    Concat(numeric block, one-hot blocks) -> the network (its tensors prefixed "net/")

That is exactly compress.data.table_encoding.encode (float64 arithmetic, then float32), so the model
on raw rows matches PyTorch on the encoded rows. Only standard ops of the default domain that
exist since opset 7 (the network's opset is kept) plus ai.onnx.ml OneHotEncoder v1; an MLflow
pyfunc DataFrame maps column by column onto the inputs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress.export.onnx import ExportError, INPUT_NAME, OUTPUT_NAME

NET_PREFIX = "net/"
PRE = "compress_pre/"
ONNX_TYPES = {"double": TensorProto.DOUBLE, "long": TensorProto.INT64,
              "boolean": TensorProto.BOOL, "string": TensorProto.STRING}
NUMPY_TYPES = {"double": np.float64, "long": np.int64, "boolean": np.bool_, "string": object}


def raw_inputs(preprocess: dict) -> list[dict]:
    """The served model's inputs: name, MLflow type and kind, in order (an input signature)."""
    return [{"name": c["name"], "type": c["type"], "kind": c["kind"]} for c in preprocess["columns"]]


def raw_feed(preprocess: dict, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw column arrays typed as the model's inputs (strings as str objects)."""
    feed = {}
    for c in preprocess["columns"]:
        values = np.asarray(columns[c["name"]])
        feed[c["name"]] = (values.astype(str).astype(object) if c["type"] == "string"
                           else values.astype(NUMPY_TYPES[c["type"]]))
    return feed


def prepend_table(path: Path, preprocess: dict, metadata: dict | None = None) -> Path:
    """Rewrite the ONNX model at `path` (input "input") to take raw rows instead (atomic)."""
    net = onnx.load(str(path))
    names = [c["name"] for c in preprocess["columns"]]
    if OUTPUT_NAME in names:
        raise ExportError(f"a feature column is named {OUTPUT_NAME!r}, the model's output; "
                          "rename the column")
    net_input = next(i for i in net.graph.input if i.name == INPUT_NAME)
    net = onnx.compose.add_prefix(net, NET_PREFIX, rename_outputs=False)
    graph = net.graph
    nodes, inits = _preprocess_nodes(preprocess, NET_PREFIX + INPUT_NAME,
                                     net_input.type.tensor_type.elem_type)
    inputs = [helper.make_tensor_value_info(c["name"], ONNX_TYPES[c["type"]], ["batch"])
              for c in preprocess["columns"]]
    keep = [i for i in graph.input if i.name != NET_PREFIX + INPUT_NAME]
    del graph.input[:]
    graph.input.extend(inputs + keep)
    graph.initializer.extend(inits)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    if any(c["kind"] == "categorical" for c in preprocess["columns"]) and \
            not any(o.domain == "ai.onnx.ml" for o in net.opset_import):
        net.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
    if metadata:
        props = {p.key: p.value for p in net.metadata_props}
        props.update(metadata)
        helper.set_model_props(net, props)
    onnx.checker.check_model(net, full_check=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(net, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _preprocess_nodes(preprocess: dict, output: str, elem_type: int):
    """Nodes and initializers computing the encoded rows into `output`."""
    nodes, inits, blocks = [], [], []
    numeric = [c for c in preprocess["columns"] if c["kind"] == "numeric"]
    if numeric:
        inits.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), PRE + "column"))
        parts = []
        for i, c in enumerate(numeric):
            cast = f"{PRE}num{i}"
            nodes.append(helper.make_node("Cast", [c["name"]], [cast], to=TensorProto.DOUBLE))
            nodes.append(helper.make_node("Reshape", [cast, PRE + "column"], [cast + "_col"]))
            parts.append(cast + "_col")
        inits += [numpy_helper.from_array(np.array([c["mean"] for c in numeric]), PRE + "mean"),
                  numpy_helper.from_array(np.array([c["std"] for c in numeric]), PRE + "std")]
        nodes += [helper.make_node("Concat", parts, [PRE + "numeric"], axis=1),
                  helper.make_node("Sub", [PRE + "numeric", PRE + "mean"], [PRE + "centred"]),
                  helper.make_node("Div", [PRE + "centred", PRE + "std"], [PRE + "scaled"]),
                  helper.make_node("Cast", [PRE + "scaled"], [PRE + "numeric_f"],
                                   to=TensorProto.FLOAT)]
        blocks.append(PRE + "numeric_f")
    for i, c in enumerate(x for x in preprocess["columns"] if x["kind"] == "categorical"):
        cats = ({"cats_strings": [str(v) for v in c["categories"]]} if c["type"] == "string"
                else {"cats_int64s": [int(v) for v in c["categories"]]})
        nodes.append(helper.make_node("OneHotEncoder", [c["name"]], [f"{PRE}onehot{i}"],
                                      domain="ai.onnx.ml", zeros=1, **cats))
        blocks.append(f"{PRE}onehot{i}")
    nodes.append(helper.make_node("Concat", blocks, [PRE + "encoded"], axis=1))
    nodes.append(helper.make_node("Cast", [PRE + "encoded"], [output], to=elem_type))
    return nodes, inits
