"""Read the weights of classify_image_graph_def.pb, the graph guided-diffusion's evaluator
loads, without TensorFlow: a minimal decoder of the protobuf wire format for the few GraphDef
fields that hold them.

    GraphDef    1: node (NodeDef, repeated)
    NodeDef     1: name   2: op   5: attr (map entry: 1 key, 2 AttrValue)
    AttrValue   4: f (float)   5: b (bool)   8: tensor (TensorProto)
    TensorProto 1: dtype (1 = DT_FLOAT)   2: tensor_shape   4: tensor_content (raw
                little-endian)   5: float_val (packed or repeated)
    TensorShapeProto  2: dim (repeated; 1: size)

Layer S of the graph keeps its weights in the Const nodes S/conv2d_params (HWIO) and
S/batchnorm/{beta, gamma, moving_mean, moving_variance}; the BatchNormWithGlobalNormalization
node S/batchnorm says whether gamma is applied (scale_after_normalization) and its ε. The
classifier is softmax/weights [2048, 1008] and softmax/biases.
"""
import struct

import numpy as np
import torch

__all__ = ["read_inception_graph", "tf_layer_names"]

_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
# The graph's mixed, mixed_1 .. mixed_10, with their block types.
_MIXED = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
          ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"),
          ("Mixed_7a", "D"), ("Mixed_7b", "E"), ("Mixed_7c", "E")]
_BRANCHES = {
    "A": {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
          "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
          "tower_1/conv_2": "branch3x3dbl_3", "tower_2/conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1", "tower/conv_1": "branch3x3dbl_2",
          "tower/conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2",
          "tower/conv_2": "branch7x7_3", "tower_2/conv": "branch_pool",
          **{"tower_1/conv" + ("" if i == 0 else f"_{i}"): f"branch7x7dbl_{i + 1}"
             for i in range(5)}},
    "D": {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2",
          **{"tower_1/conv" + ("" if i == 0 else f"_{i}"): f"branch7x7x3_{i + 1}"
             for i in range(4)}},
    "E": {"conv": "branch1x1", "tower/conv": "branch3x3_1", "tower/mixed/conv": "branch3x3_2a",
          "tower/mixed/conv_1": "branch3x3_2b", "tower_1/conv": "branch3x3dbl_1",
          "tower_1/conv_1": "branch3x3dbl_2", "tower_1/mixed/conv": "branch3x3dbl_3a",
          "tower_1/mixed/conv_1": "branch3x3dbl_3b", "tower_2/conv": "branch_pool"},
}


def tf_layer_names():
    """{graph scope: InceptionV3FID module name} for all 94 convolution layers."""
    names = dict(_STEM)
    for i, (block, kind) in enumerate(_MIXED):
        scope = "mixed" if i == 0 else f"mixed_{i}"
        names.update({f"{scope}/{tf}": f"{block}.{ours}" for tf, ours in _BRANCHES[kind].items()})
    return names


# ---- protobuf wire format ----------------------------------------------------------------------

def _varint(buf, i):
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """(field number, wire type, value) of one message; length-delimited values are memoryview
    slices, fixed-width ones raw bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i:i + size], i + size
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i > n:
            raise ValueError("truncated protobuf message")
        yield number, wire, value


def _shape(buf):
    """TensorShapeProto -> [sizes]."""
    dims = []
    for number, _, dim in _fields(buf):
        if number == 2:
            dims.append(next((v for k, _, v in _fields(dim) if k == 1), 0))
    return dims


def _tensor(buf):
    """TensorProto -> float32 array, or None for other dtypes."""
    dtype, shape, content, floats = None, [], None, []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _shape(value)
        elif number == 4:
            content = bytes(value)
        elif number == 5:
            floats.extend(struct.unpack(f"<{len(value) // 4}f", value) if wire == 2
                          else struct.unpack("<f", value))
    if dtype != 1:  # not DT_FLOAT
        return None
    if content is not None:
        arr = np.frombuffer(content, dtype="<f4")
    else:
        arr = np.array(floats, dtype=np.float32)
        if arr.size == 1 and int(np.prod(shape)) > 1:  # a splat constant
            arr = np.full(int(np.prod(shape)), arr[0], dtype=np.float32)
    return arr.reshape(shape)


def _nodes(data):
    for number, _, node in _fields(memoryview(data)):
        if number != 1:
            continue
        name, op, attrs = None, None, {}
        for n, _, value in _fields(node):
            if n == 1:
                name = bytes(value).decode()
            elif n == 2:
                op = bytes(value).decode()
            elif n == 5:
                entry = dict((k, v) for k, _, v in _fields(value))
                attrs[bytes(entry.get(1, b"")).decode()] = entry.get(2, b"")
        yield name, op, attrs


def _attr(value):
    """{field: value} of an AttrValue."""
    return {n: v for n, _, v in _fields(value)}


def _read_graph(path):
    """(float constants {name: array}, batch-norm attributes {scope: (eps, scale_after)})."""
    consts, norms = {}, {}
    for name, op, attrs in _nodes(path.read_bytes()):
        if op == "Const" and "value" in attrs:
            tensor = _attr(attrs["value"]).get(8)
            arr = _tensor(tensor) if tensor is not None else None
            if arr is not None:
                consts[name] = arr
        elif op == "BatchNormWithGlobalNormalization":
            eps = struct.unpack("<f", _attr(attrs["variance_epsilon"])[4])[0]
            scale_after = bool(_attr(attrs.get("scale_after_normalization", b"")).get(5, 0))
            norms[name.rsplit("/", 1)[0]] = (eps, scale_after)
    return consts, norms


def read_inception_graph(path):
    """The graph at path as an InceptionV3FID state dict (pytorch-fid's key names)."""
    from .inception import InceptionWeightsError
    try:
        consts, norms = _read_graph(path)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, struct.error) as e:
        raise InceptionWeightsError(
            f"could not read {path} as a TensorFlow GraphDef: {e}") from None
    state = {}
    try:
        for scope, ours in tf_layer_names().items():
            eps, scale_after = norms[scope]
            if abs(eps - 0.001) > 1e-9:
                raise InceptionWeightsError(f"{path}: {scope}/batchnorm has ε = {eps:.3g}, not the "
                                            "0.001 of the FID InceptionV3")
            bn = f"{scope}/batchnorm/"
            state[f"{ours}.conv.weight"] = consts[f"{scope}/conv2d_params"].transpose(3, 2, 0, 1)
            state[f"{ours}.bn.weight"] = (consts[bn + "gamma"] if scale_after
                                          else np.ones_like(consts[bn + "beta"]))
            state[f"{ours}.bn.bias"] = consts[bn + "beta"]
            state[f"{ours}.bn.running_mean"] = consts[bn + "moving_mean"]
            state[f"{ours}.bn.running_var"] = consts[bn + "moving_variance"]
        state["fc.weight"] = consts["softmax/weights"].T
        state["fc.bias"] = consts["softmax/biases"]
    except KeyError as e:
        raise InceptionWeightsError(
            f"{path} is a GraphDef but not classify_image_graph_def.pb (inception-2015-12-05): "
            f"it has no node {e}") from None
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}
