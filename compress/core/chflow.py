"""How channel ids flow through a traced model (the pass behind compress.core.chgraph).

Each fx node's output gets a state: `_Lab` (a tensor whose dim `dim` holds channel ids, and
whether each position is zero when its group's producing slices are), `_Param` (a tensor read
from a parameter: a per-channel parameter joins the group it meets), `_Size`/`_Dyn` (sizes and
ints, and whether they come from a channel count), or None (no channels). One handler per op
family: layers create ids and record the parameter slices producing and reading them;
elementwise ops, concats, depthwise convs and the halves of a channel shuffle merge ids;
anything that fixes a width (the model's input and output, an unknown op, a reshape to a
constant width, a fixed slice) pins them; norms and softmaxes across channels mark them inexact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from compress.core.chgraph import INPUT, OUTPUT, Member

# ---------------------------------------------------------------------------- node states
@dataclass
class _Lab:
    """A tensor whose dim `dim` holds channel ids (`zero`: the position is zero when its
    group's producing slices are)."""

    dim: int
    ids: torch.Tensor
    zero: torch.Tensor


@dataclass
class _Param:
    """A tensor read from a parameter or buffer; dmap[d] = the parameter's dim behind dim d."""

    name: str
    dmap: list


@dataclass
class _Size:
    chan: int | None        # torch.Size of a tensor whose channel dim is `chan`
    ndim: int


@dataclass
class _Dyn:
    chan: bool              # an int computed at run time; True: from a channel count


_ZERO_KEEPING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish,
                         nn.Tanh, nn.ELU, nn.Mish, nn.Hardtanh, nn.Identity, nn.Dropout,
                         nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_GATE_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample)
_ZERO_KEEPING_FNS = {"relu", "relu_", "relu6", "gelu", "silu", "hardswish", "tanh", "elu",
                     "leaky_relu", "hardtanh", "mish", "dropout", "dropout1d", "dropout2d",
                     "contiguous", "clone", "float", "to", "detach", "stochastic_depth", "neg",
                     "abs", "type_as"}
_GATE_FNS = {"sigmoid", "hardsigmoid", "exp", "softplus", "cos"}
_POOL_FNS = {"adaptive_avg_pool2d", "adaptive_avg_pool1d", "avg_pool2d", "max_pool2d",
             "adaptive_max_pool2d", "avg_pool1d", "max_pool1d", "interpolate"}
_SUM_FNS = {"add", "iadd", "radd", "sub", "isub", "rsub"}
_PRODUCT_FNS = {"mul", "imul", "rmul"}
_IGNORED_FNS = {"assert", "eq", "ne", "dim", "lt", "gt", "le", "ge"}


def _fn_name(node: fx.Node) -> str:
    """torch.add, Tensor.add, operator.add: 'add' (torchvision's private helpers lose the _)."""
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).lstrip("_")


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class Flow:
    """One pass over the traced graph: ids, unions, members, constraints, reasons."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule):
        self.model, self.gm = model, gm
        self.modules = dict(model.named_modules())
        self.parent: list[int] = []
        self.spaces: list[tuple[int, int, str | None, str]] = []  # (base, size, layer, kind)
        self.space_of: list[int] = []
        self.pins: dict[int, str] = {}          # id -> why it cannot go
        self.mixes: dict[int, str] = {}         # id -> why a mask cannot remove it
        self.nonzero_reads: set[int] = set()    # ids read where they may be non-zero
        self.members: list[Member] = []         # units hold raw ids until grouping
        self.partitions: list[tuple[torch.Tensor, torch.Tensor, str]] = []  # ids, block, op
        self.balanced: list[tuple[list[torch.Tensor], str]] = []  # chunk blocks of ids
        self.flat_linear: set[int] = set()      # spaces produced by a Linear on 2-D input
        self.zero_buffers: list[tuple[str, torch.Tensor]] = []
        self.state: dict[fx.Node, Any] = {}

    # -- ids
    def space(self, size: int, layer: str | None, kind: str = "channels",
              pin: str | None = None) -> torch.Tensor:
        base = len(self.parent)
        self.parent.extend(range(base, base + size))
        self.space_of.extend([len(self.spaces)] * size)
        self.spaces.append((base, size, layer, kind))
        ids = torch.arange(base, base + size)
        if pin:
            self.pin(ids, pin)
        return ids

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x < 0 or y < 0:
                continue
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def pin(self, ids: torch.Tensor, reason: str) -> None:
        for i in ids.tolist():
            if i >= 0:
                self.pins.setdefault(i, reason)

    def mix(self, ids: torch.Tensor, reason: str) -> None:
        for i in ids.tolist():
            if i >= 0:
                self.mixes.setdefault(i, reason)

    def read(self, lab: _Lab) -> None:
        """A weight reads these positions: record those that may be non-zero there."""
        self.nonzero_reads.update(lab.ids[~lab.zero].tolist())

    def member(self, param: str, dim: int, ids: torch.Tensor, produces: bool,
               groups: int = 1) -> None:
        self.members.append(Member(param, dim, ids.clone(), produces, groups))

    # -- helpers on states
    def pin_state(self, value, reason: str) -> None:
        for lab in _labs(value):
            self.pin(lab.ids, reason)
            self.read(lab)

    def value(self, arg):
        if isinstance(arg, fx.Node):
            return self.state.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    # -- the pass
    def run(self) -> None:
        for node in self.gm.graph.nodes:
            try:
                self.state[node] = self.visit(node)
            except _Pin as p:
                inputs = [self.value(a) for a in node.args] + \
                    [self.value(v) for v in node.kwargs.values()]
                self.pin_state(inputs, p.reason)
                self.state[node] = _carry(node, _labs(inputs))

    def visit(self, node: fx.Node):
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is None or len(shape) < 2:
                return None
            dim = 1 if len(shape) > 2 else len(shape) - 1
            ids = self.space(shape[dim], None, pin=INPUT)
            return _Lab(dim, ids, torch.zeros(len(ids), dtype=torch.bool))
        if node.op == "get_attr":
            obj = _attr(self.model, str(node.target))
            return _Param(str(node.target), list(range(obj.dim()))) if torch.is_tensor(obj) \
                else None
        if node.op == "output":
            self.pin_state([self.value(a) for a in node.args], OUTPUT)
            return None
        if node.op == "call_module":
            return self.call_module(node, self.modules[str(node.target)])
        return self.call_function(node, _fn_name(node))

    # ------------------------------------------------------------------ modules
    def call_module(self, node: fx.Node, mod: nn.Module):
        from compress.core.attention import PrunedAttention
        name = str(node.target)
        args = [self.value(a) for a in node.args]
        x = args[0] if args else None
        if isinstance(mod, nn.modules.conv._ConvNd):
            return self.conv(node, name, mod, x)
        if isinstance(mod, nn.Linear):
            return self.linear(node, name, mod, x)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return self.batchnorm(name, mod, x)
        if isinstance(mod, nn.LayerNorm):
            return self.layer_norm(node.args[0], x, len(mod.normalized_shape),
                                   [f"{name}.{p}" for p, _ in mod.named_parameters()],
                                   f"LayerNorm {name!r}")
        if isinstance(mod, (nn.MultiheadAttention, PrunedAttention)):
            return self.attention(node, name, mod, args)
        if isinstance(mod, _ZERO_KEEPING_MODULES):
            return x
        if isinstance(mod, _GATE_MODULES):
            return _gate(x)
        if isinstance(mod, _POOL_MODULES):
            return self.pool(node, x)
        if isinstance(mod, nn.Flatten):
            return self.flatten(node, x, mod.start_dim, mod.end_dim)
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            return self.softmax(node, x, mod.dim)
        raise _Pin(f"its channels pass through {type(mod).__name__} {name!r}")

    def conv(self, node, name: str, mod, x):
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            raise _Pin(f"its channels pass through {type(mod).__name__} {name!r}")
        lab = _lab(x)
        if lab is not None and lab.dim != 1:
            raise _Pin(f"conv {name!r} reads them on a dim other than its channels")
        groups, cin, cout = mod.groups, mod.in_channels, mod.out_channels
        params = [p for p, _ in mod.named_parameters(recurse=False)]
        if groups > 1 and groups == cin == cout:  # depthwise: each channel keeps its own filter
            if lab is None:
                ids = self.space(cout, name, pin=f"conv {name!r} reads fixed channels")
                return _Lab(1, ids, torch.ones(cout, dtype=torch.bool))
            for p in params:
                self.member(f"{name}.{p}", 0, lab.ids, True)
            return _Lab(1, lab.ids, torch.ones_like(lab.zero))
        if lab is not None:
            self.read(lab)
            self.member(f"{name}.weight", 1, lab.ids, False, groups)
            if groups > 1:
                self.partitions.append((lab.ids, torch.arange(cin) // (cin // groups),
                                        f"grouped conv {name!r}"))
        ids = self.space(cout, name)
        for p in params:
            self.member(f"{name}.{p}", 0, ids, True)
        if groups > 1:
            self.partitions.append((ids, torch.arange(cout) // (cout // groups),
                                    f"grouped conv {name!r}"))
        return _Lab(1, ids, torch.ones(cout, dtype=torch.bool))

    def linear(self, node, name: str, mod: nn.Linear, x):
        shape = _shape(node.args[0])
        lab = _lab(x)
        if lab is not None:
            if lab.dim != len(shape) - 1:
                raise _Pin(f"Linear {name!r} reads them on a dim other than its last")
            self.read(lab)
            self.member(f"{name}.weight", 1, lab.ids, False)
        ids = self.space(mod.out_features, name)
        for p, _ in mod.named_parameters(recurse=False):
            self.member(f"{name}.{p}", 0, ids, True)
        if shape is not None and len(shape) <= 2:
            self.flat_linear.add(len(self.spaces) - 1)
        return _Lab(len(shape) - 1 if shape else 1, ids, torch.ones(len(ids), dtype=torch.bool))

    def batchnorm(self, name: str, mod, x):
        lab = _lab(x)
        if lab is None:
            return None
        if lab.dim != 1:
            raise _Pin(f"BatchNorm {name!r} normalises another dim")
        for p, _ in mod.named_parameters(recurse=False):
            self.member(f"{name}.{p}", 0, lab.ids, True)
        for b, buf in mod.named_buffers(recurse=False):
            if buf is not None and buf.dim() == 1:
                self.member(f"{name}.{b}", 0, lab.ids, True)
        if not mod.affine and mod.running_mean is not None:
            self.zero_buffers.append((f"{name}.running_mean", lab.ids))
        zero = torch.ones_like(lab.zero) if mod.affine else lab.zero
        return _Lab(1, lab.ids, zero)

    def layer_norm(self, src, x, ndims: int, params: list[str], what: str):
        lab = _lab(x)
        if lab is None:
            return x
        if ndims != 1 or lab.dim != len(_shape(src)) - 1:
            raise _Pin(f"{what} normalises them together with other dims")
        if not params:
            raise _Pin(f"{what} has a fixed width and no weights")
        for p in params:
            self.member(p, 0, lab.ids, True)
        self.mix(lab.ids, f"{what} normalises over them")
        return _Lab(lab.dim, lab.ids, torch.ones_like(lab.zero))

    def attention(self, node, name: str, mod, args):
        kw = {k: self.value(v) for k, v in node.kwargs.items()}
        q, k, v = (args + [None, None, None])[:3]
        if isinstance(mod, nn.MultiheadAttention) and (
                not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn):
            raise _Pin(f"attention {name!r} uses separate or extra key/value projections")
        heads, head_dim = mod.num_heads, mod.head_dim
        inner = heads * head_dim
        in_dim = mod.in_proj_weight.shape[1]
        out_dim = mod.out_proj.out_features
        labs = [lab for lab in (_lab(q), _lab(k), _lab(v)) if lab is not None]
        for lab in labs:
            self.read(lab)
        if labs:
            for lab in labs[1:]:
                self.union(labs[0].ids, lab.ids)
            self.member(f"{name}.in_proj_weight", 1, labs[0].ids, False)
        out = self.space(out_dim, f"{name}.out_proj")
        self.member(f"{name}.out_proj.weight", 0, out, True)
        if mod.out_proj.bias is not None:
            self.member(f"{name}.out_proj.bias", 0, out, True)
        masked = kw.get("attn_mask") is not None or kw.get("key_padding_mask") is not None
        heads_ids = self.space(heads, name, kind="heads",
                               pin=f"attention {name!r} is given a mask" if masked else None)
        per_row = heads_ids[(torch.arange(3 * inner) % inner) // head_dim]
        self.member(f"{name}.in_proj_weight", 0, per_row, True)
        if mod.in_proj_bias is not None:
            self.member(f"{name}.in_proj_bias", 0, per_row, True)
        self.member(f"{name}.out_proj.weight", 1, heads_ids[torch.arange(inner) // head_dim],
                    False)
        shape = _shape(node.args[0]) or (1, 1, in_dim)
        return (_Lab(len(shape) - 1, out, torch.ones(out_dim, dtype=torch.bool)), None)

    # ------------------------------------------------------------------ functions
    def call_function(self, node: fx.Node, fn: str):
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        if fn == "getitem":
            return self.getitem(node, args[0], node.args[1])
        if fn == "getattr" and (len(args) < 2 or args[1] != "shape"):
            return None  # dtype, device, ...: not tensors
        if fn in ("size", "getattr"):
            lab = _lab(args[0])
            if len(args) > 1 and fn == "size":
                return _Dyn(lab is not None and args[1] % len(_shape(node.args[0])) == lab.dim)
            return _Size(lab.dim if lab is not None else None, len(_shape(node.args[0])))
        tensors = [a for a in args if isinstance(a, (_Lab, _Param))]
        if not any(isinstance(a, (_Lab, _Param)) for a in _flat(args) + _flat(list(kwargs.values()))):
            if any(isinstance(a, (_Dyn, _Size)) for a in _flat(args)):
                return _Dyn(any(isinstance(a, _Dyn) and a.chan for a in _flat(args)))
            return None
        if fn in _IGNORED_FNS:
            return None
        if fn in _ZERO_KEEPING_FNS:
            return args[0] if tensors else None
        if fn in _GATE_FNS:
            return _gate(args[0])
        if fn in _SUM_FNS or fn in _PRODUCT_FNS:
            return self.elementwise(node, args[:2], product=fn in _PRODUCT_FNS, fn=fn)
        if fn in ("truediv", "div"):
            den = _lab(args[1]) if len(args) > 1 else None
            if den is not None:
                self.mix(den.ids, f"{node.name} divides by them")
            return self.elementwise(node, args[:2], product=True, fn=fn)
        if fn in _POOL_FNS:
            return self.pool(node, args[0])
        if fn in ("cat", "concat", "concatenate"):
            return self.cat(node, args[0], kwargs.get("dim", args[1] if len(args) > 1 else 0))
        if fn in ("chunk", "split", "tensor_split"):
            return self.chunk(node, fn, args, kwargs)
        if fn == "flatten":
            start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            return self.flatten(node, args[0], start, end)
        if fn in ("view", "reshape"):
            sizes = args[1:] if not (len(args) == 2 and isinstance(args[1], (list, tuple))) \
                else list(args[1])
            return self.reshape(node, args[0], sizes)
        if fn in ("permute", "transpose", "swapaxes", "movedim", "t"):
            return self.permute(node, fn, args, kwargs)
        if fn in ("unsqueeze", "squeeze", "expand", "expand_as"):
            return self.reshape_like(node, args[0])
        if fn in ("mean", "sum", "amax", "max", "amin", "min", "std", "var"):
            return self.reduce(node, fn, args, kwargs)
        if fn in ("softmax", "log_softmax"):
            return self.softmax(node, args[0], kwargs.get("dim", args[1] if len(args) > 1 else None))
        if fn == "layer_norm":
            return self.functional_layer_norm(node, args, kwargs)
        if fn == "pad":
            return self.pad(node, args, kwargs)
        if fn == "patch_merging_pad":  # torchvision swin: four strided copies, concatenated
            lab = _lab(args[0])
            return None if lab is None else _Lab(lab.dim, lab.ids.repeat(4), lab.zero.repeat(4))
        if fn == "shifted_window_attention":
            return self.window_attention(node, args, kwargs)
        raise _Pin(f"its channels pass through {fn} ({node.name})")

    def elementwise(self, node, operands: list, product: bool, fn: str):
        shape = _shape(node)
        if shape is None:
            raise _Pin(f"{fn} ({node.name}) gives no tensor")
        nd = len(shape)
        labs = []
        for arg, a in zip(node.args, operands):
            if isinstance(a, _Lab):
                labs.append((a.dim + nd - len(_shape(arg)), a))
        if not labs:
            return None
        dim = labs[0][0]
        if any(d != dim or len(a.ids) != len(labs[0][1].ids) for d, a in labs):
            raise _Pin(f"{fn} ({node.name}) combines channels of different widths")
        for _, a in labs[1:]:
            self.union(labs[0][1].ids, a.ids)
        ids = labs[0][1].ids
        # Is each position zero when its group's producing slices are? A product is zero if
        # any factor is; a sum only if every term is (a non-zero constant term breaks it).
        zeros = [a.zero for _, a in labs]
        for arg, a in zip(node.args, operands):
            if isinstance(a, _Lab):
                continue
            size = _size_at(arg, dim, nd)
            if isinstance(a, _Param):
                pdim = _param_dim(a, dim - (nd - len(_shape(arg))))
                if size == len(ids) and pdim is not None:  # a per-channel parameter term
                    self.member(a.name, pdim, ids, True)
                    zeros.append(torch.ones_like(ids, dtype=torch.bool))
                    continue
            if size not in (None, 1):
                raise _Pin(f"{fn} ({node.name}) combines them with a tensor of fixed width")
            if isinstance(a, (int, float)) and a == 0:
                zeros.append(torch.ones_like(ids, dtype=torch.bool))
            elif not product:
                zeros.append(torch.zeros_like(ids, dtype=torch.bool))
        zero = zeros[0].clone()
        for z in zeros[1:]:
            zero = zero | z if product else zero & z
        if fn in ("truediv", "div") and len(operands) > 1 and isinstance(operands[1], _Lab):
            zero = torch.zeros_like(zero)
        return _Lab(dim, ids, zero)

    def pool(self, node, x):
        lab = _lab(x)
        if lab is None:
            return x
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        if lab.dim != 1 or shape_out is None or shape_out[1] != shape_in[1]:
            raise _Pin(f"{node.name} pools over them")
        return lab

    def cat(self, node, tensors, dim: int):
        shapes = [_shape(t) for t in node.args[0]]
        nd = len(shapes[0])
        dim %= nd
        labs = [t for t in tensors if isinstance(t, _Lab)]
        if not labs:
            return None
        if all(lab.dim == dim for lab in labs):  # concatenated channels
            ids, zero = [], []
            for t, shape in zip(tensors, shapes):
                if isinstance(t, _Lab):
                    ids.append(t.ids)
                    zero.append(t.zero)
                else:  # fixed channels joining the concat
                    ids.append(self.space(shape[dim], None,
                                          pin=f"{node.name} concatenates them with fixed ones"))
                    zero.append(torch.zeros(shape[dim], dtype=torch.bool))
            return _Lab(dim, torch.cat(ids), torch.cat(zero))
        cdim = labs[0].dim
        if any(lab.dim != cdim or len(lab.ids) != len(labs[0].ids) for lab in labs):
            raise _Pin(f"{node.name} concatenates tensors with channels on different dims")
        for lab in labs[1:]:
            self.union(labs[0].ids, lab.ids)
        zero = labs[0].zero.clone()
        for lab in labs[1:]:
            zero &= lab.zero
        for t, shape in zip(tensors, shapes):
            if isinstance(t, _Param) and _param_dim(t, cdim) is not None:
                self.member(t.name, _param_dim(t, cdim), labs[0].ids, True)
            elif not isinstance(t, _Lab):
                raise _Pin(f"{node.name} concatenates them with a tensor of fixed width")
        return _Lab(cdim, labs[0].ids, zero)

    def chunk(self, node, fn: str, args, kwargs):
        lab = _lab(args[0])
        shape = _shape(node.args[0])
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0) % len(shape)
        if lab is None or lab.dim != dim:
            if lab is None:
                return [None] * len(_meta_list(node))
            return [_Lab(lab.dim, lab.ids, lab.zero) for _ in _meta_list(node)]
        if fn != "chunk":
            raise _Pin(f"{node.name} splits them at fixed sizes")
        parts = len(_meta_list(node))
        n = len(lab.ids)
        if n % parts:
            raise _Pin(f"{node.name} splits them unevenly")
        size = n // parts
        chunks = [lab.ids[i * size:(i + 1) * size] for i in range(parts)]
        self.balanced.append((chunks, f"{node.name} (chunk)"))
        return [_Lab(dim, c, lab.zero[i * size:(i + 1) * size]) for i, c in enumerate(chunks)]

    def getitem(self, node, obj, index):
        if isinstance(obj, (list, tuple)):
            return obj[index] if isinstance(index, int) else None
        if isinstance(obj, _Size):
            if isinstance(index, int):
                return _Dyn(obj.chan is not None and index % obj.ndim == obj.chan)
            dims = range(obj.ndim)[index] if isinstance(index, slice) else range(obj.ndim)
            return [_Dyn(d == obj.chan) for d in dims]
        lab = _lab(obj)
        if lab is None:
            return None
        idx = index if isinstance(index, tuple) else (index,)
        shape_in = _shape(node.args[0])
        if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in idx):
            raise _Pin(f"{node.name} indexes them with a tensor")
        # Walk the index over the input dims: where does the channel dim land?
        expanded = []
        n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
        for i in idx:
            if i is Ellipsis:
                expanded += [slice(None)] * (len(shape_in) - n_real)
            else:
                expanded.append(i)
        out_dim, d = 0, 0
        new_dim = None
        for i in expanded:
            if i is None:
                out_dim += 1
                continue
            if d == lab.dim:
                if isinstance(i, int) or i != slice(None):
                    raise _Pin(f"{node.name} takes fixed channels out of them")
                new_dim = out_dim
            if not isinstance(i, int):
                out_dim += 1
            d += 1
        if new_dim is None:  # the channel dim is past the index: it keeps its place
            new_dim = out_dim + (lab.dim - d)
        return _Lab(new_dim, lab.ids, lab.zero)

    def flatten(self, node, x, start: int, end: int):
        lab = _lab(x)
        if isinstance(x, _Param) or lab is None:
            return None
        shape = _shape(node.args[0])
        nd = len(shape)
        start, end = start % nd, end % nd
        if lab.dim < start:
            return lab
        if lab.dim > end:
            return _Lab(lab.dim - (end - start), lab.ids, lab.zero)
        inner = _prod(shape[lab.dim + 1:end + 1])
        outer = _prod(shape[start:lab.dim])
        return _Lab(start, lab.ids.repeat_interleave(inner).repeat(outer),
                    lab.zero.repeat_interleave(inner).repeat(outer))

    def reshape(self, node, x, sizes: list):
        lab = _lab(x)
        if isinstance(x, _Param):
            return self.reshape_like(node, x)
        if lab is None:
            return None
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        groups = _regroup(shape_in, shape_out)
        if groups is None:
            raise _Pin(f"{node.name} reshapes them in a way not understood")
        for ins, outs in groups:
            if lab.dim not in ins:
                continue
            free = [o for o in outs if shape_out[o] > 1 and _dynamic(sizes, o)]
            if len(ins) >= 1 and len(outs) == 1:
                if not free and shape_out[outs[0]] > 1:
                    raise _Pin(f"forward() reshapes them to the fixed width "
                               f"{shape_out[outs[0]]} ({node.name})")
                sub = [shape_in[i] for i in ins]
                k = ins.index(lab.dim)
                inner, outer = _prod(sub[k + 1:]), _prod(sub[:k])
                return _Lab(outs[0], lab.ids.repeat_interleave(inner).repeat(outer),
                            lab.zero.repeat_interleave(inner).repeat(outer))
            if len(ins) == 1 and len(free) == 1:
                f = free[0]
                sub = [shape_out[o] for o in outs]
                grid = lab.ids.view(*sub)
                zgrid = lab.zero.view(*sub)
                k = outs.index(f)
                cols = grid.movedim(k, 0).reshape(sub[k], -1)
                zcols = zgrid.movedim(k, 0).reshape(sub[k], -1)
                for j in range(1, cols.shape[1]):
                    self.union(cols[:, 0], cols[:, j])
                return _Lab(f, cols[:, 0].clone(), zcols.all(1))
            raise _Pin(f"forward() reshapes them to fixed sizes ({node.name})")
        raise _Pin(f"{node.name} reshapes them in a way not understood")

    def reshape_like(self, node, x):
        """unsqueeze / squeeze / expand and reshapes of parameters: dims of size 1 come and
        go, the channel dim keeps its size."""
        shape_in, shape_out = _shape(node.args[0]), _shape(node)
        if shape_in is None or shape_out is None:
            return None
        keep = _track_nonunit(shape_in, shape_out)
        if isinstance(x, _Param):
            if keep is None:
                return None
            dmap = [None] * len(shape_out)
            for i, o in keep.items():
                dmap[o] = x.dmap[i]
            return _Param(x.name, dmap)
        lab = _lab(x)
        if lab is None:
            return None
        if keep is None or lab.dim not in keep:
            if shape_in[lab.dim] == 1 and len(lab.ids) == 1:
                raise _Pin(f"{node.name} broadcasts a single channel")
            raise _Pin(f"{node.name} reshapes them in a way not understood")
        return _Lab(keep[lab.dim], lab.ids, lab.zero)

    def permute(self, node, fn: str, args, kwargs):
        x = args[0]
        nd = len(_shape(node.args[0]))
        if fn == "permute":
            perm = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) \
                else list(args[1:])
            perm = [p % nd for p in perm]
        elif fn == "t":
            perm = [1, 0] if nd == 2 else [0]
        elif fn == "movedim":
            src, dst = args[1] % nd, args[2] % nd
            rest = [d for d in range(nd) if d != src]
            rest.insert(dst, src)
            perm = rest
        else:
            a, b = args[1] % nd, args[2] % nd
            perm = list(range(nd))
            perm[a], perm[b] = perm[b], perm[a]
        if isinstance(x, _Param):
            return _Param(x.name, [x.dmap[p] for p in perm])
        lab = _lab(x)
        return None if lab is None else _Lab(perm.index(lab.dim), lab.ids, lab.zero)

    def reduce(self, node, fn: str, args, kwargs):
        lab = _lab(args[0])
        if lab is None:
            return None
        nd = len(_shape(node.args[0]))
        dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        if dims is None:
            raise _Pin(f"{node.name} reduces over them")
        dims = [d % nd for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if lab.dim in dims:
            raise _Pin(f"{node.name} ({fn}) reduces over them")
        if fn in ("max", "min"):
            raise _Pin(f"{node.name} ({fn}) returns values and indices")
        new = lab.dim if keep else lab.dim - sum(1 for d in dims if d < lab.dim)
        return _Lab(new, lab.ids, lab.zero)

    def softmax(self, node, x, dim):
        lab = _lab(x)
        if lab is None:
            return None
        nd = len(_shape(node.args[0]))
        if dim is None or dim % nd == lab.dim:
            self.mix(lab.ids, f"{node.name} (softmax) normalises over them")
            return _gate(lab)
        return _gate(lab)

    def functional_layer_norm(self, node, args, kwargs):
        x = args[0]
        shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
        weight = kwargs.get("weight", args[2] if len(args) > 2 else None)
        bias = kwargs.get("bias", args[3] if len(args) > 3 else None)
        params = [p.name for p in (weight, bias) if isinstance(p, _Param)]
        owner = params[0].rpartition(".")[0] if params else None
        if params and not isinstance(self.modules.get(owner), nn.LayerNorm):
            raise _Pin(f"{node.name} (layer_norm) has a fixed width")
        return self.layer_norm(node.args[0], x, len(shape), params,
                               f"LayerNorm {owner or node.name!r}")

    def pad(self, node, args, kwargs):
        lab = _lab(args[0])
        if lab is None:
            return None
        pads = list(args[1] if len(args) > 1 else kwargs.get("pad"))
        nd = len(_shape(node.args[0]))
        touched = {nd - 1 - i // 2 for i, p in enumerate(pads) if p}
        if lab.dim in touched:
            raise _Pin(f"{node.name} pads them")
        return lab

    def window_attention(self, node, args, kwargs):
        """torchvision's swin attention: reads the input width to size its heads, so neither
        the stream nor the heads can change width; its output is the proj layer's."""
        lab = _lab(args[0])
        if lab is not None:
            self.pin(lab.ids, f"shifted_window_attention ({node.name}) sizes its heads from "
                              "the input width")
            self.read(lab)
        proj = args[2]
        name = proj.name.rpartition(".")[0] if isinstance(proj, _Param) else node.name
        shape = _shape(node)
        ids = self.space(shape[-1], name)
        self.pin(ids, f"shifted_window_attention ({node.name}) has a fixed width")
        return _Lab(len(shape) - 1, ids, torch.ones(len(ids), dtype=torch.bool))


class _Pin(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _carry(node: fx.Node, labs: list[_Lab]) -> _Lab | None:
    """After an op pinned its input channels: the same (pinned) ids on the output dim of that
    width, so whatever they meet downstream is pinned for the same reason."""
    shape = _shape(node)
    if not labs or shape is None:
        return None
    lab = labs[0]
    dims = [d for d, s in enumerate(shape) if s == len(lab.ids)]
    if not dims:
        return None
    dim = lab.dim if lab.dim in dims else dims[-1]
    return _Lab(dim, lab.ids, torch.zeros_like(lab.zero))


def _labs(value) -> list[_Lab]:
    out = []
    for v in _flat(value if isinstance(value, (list, tuple)) else [value]):
        if isinstance(v, _Lab):
            out.append(v)
    return out


def _flat(values) -> list:
    out = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out.extend(_flat(v))
        else:
            out.append(v)
    return out


def _lab(x) -> _Lab | None:
    return x if isinstance(x, _Lab) else None


def _gate(x):
    lab = _lab(x)
    return None if lab is None else _Lab(lab.dim, lab.ids, torch.zeros_like(lab.zero))


def _meta_list(node) -> list:
    meta = node.meta.get("tensor_meta")
    return list(meta) if isinstance(meta, (list, tuple)) else [meta]


def _attr(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _size_at(arg, dim: int, nd: int) -> int | None:
    shape = _shape(arg) if isinstance(arg, fx.Node) else None
    if shape is None:
        return None
    d = dim - (nd - len(shape))
    return shape[d] if 0 <= d < len(shape) else 1


def _param_dim(p: _Param, d: int) -> int | None:
    return p.dmap[d] if 0 <= d < len(p.dmap) else None


def _dynamic(sizes: list, o: int) -> bool:
    """Is the reshape's size for output dim `o` computed from a channel count (or -1)?"""
    if not sizes:
        return True
    s = sizes[o] if o < len(sizes) else None
    return (isinstance(s, _Dyn) and s.chan) or s == -1


def _regroup(shape_in: tuple, shape_out: tuple) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input dims with runs of output dims of equal product (size-1 dims join
    the run they follow)."""
    groups, i, j = [], 0, 0
    while i < len(shape_in) or j < len(shape_out):
        ins, outs = [], []
        a = b = 1
        if i < len(shape_in):
            a *= shape_in[i]
            ins.append(i)
            i += 1
        if j < len(shape_out):
            b *= shape_out[j]
            outs.append(j)
            j += 1
        while a != b:
            if a < b and i < len(shape_in):
                a *= shape_in[i]
                ins.append(i)
                i += 1
            elif b < a and j < len(shape_out):
                b *= shape_out[j]
                outs.append(j)
                j += 1
            else:
                return None
        while i < len(shape_in) and shape_in[i] == 1 and (j >= len(shape_out) or shape_out[j] != 1):
            ins.append(i)
            i += 1
        while j < len(shape_out) and shape_out[j] == 1 and (i >= len(shape_in) or shape_in[i] != 1):
            outs.append(j)
            j += 1
        groups.append((ins, outs))
    return groups


def _track_nonunit(shape_in: tuple, shape_out: tuple) -> dict[int, int] | None:
    """For ops that only add, drop or expand size-1 dims: input dim -> output dim."""
    if len(shape_in) == len(shape_out):
        return {i: i for i in range(len(shape_in))
                if shape_in[i] == shape_out[i] or shape_in[i] == 1}
    out, j = {}, 0
    for i, s in enumerate(shape_in):
        if s == 1 and (j >= len(shape_out) or shape_out[j] != 1) and len(shape_in) > len(shape_out):
            continue
        while j < len(shape_out) and shape_out[j] != s and shape_out[j] == 1:
            j += 1
        if j >= len(shape_out) or shape_out[j] != s:
            return None
        out[i] = j
        j += 1
    return out
