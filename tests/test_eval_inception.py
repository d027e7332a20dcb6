"""The evaluator's InceptionV3 (fastguide.eval.inception) with random weights: the graph's input
pipeline (TF1 ResizeBilinear, Sub, Mul), mixed_6/conv after batch norm and ReLU in NHWC order,
pool_3, the bias-free logits MatMul, TF's pools; weight files and the GraphDef reader.

No converted real weights ship with the tests: the graph is 95 MB and cannot be fetched here."""
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastguide.eval.inception import (InceptionV3FID, InceptionWeightsError, load_inception,
                                      resize_bilinear_tf1)
from fastguide.eval.inception_graph import tf_layer_names


def tf1_resize_reference(img, out_h, out_w, rows=None, cols=None):
    """TF 1.x resize_bilinear (align_corners=False, legacy scaler), one pixel at a time (only
    the given output rows and columns, if given)."""
    c, in_h, in_w = img.shape
    rows, cols = rows or range(out_h), cols or range(out_w)
    out = np.zeros((c, len(rows), len(cols)), np.float32)
    sy, sx = np.float32(in_h / out_h), np.float32(in_w / out_w)
    for i, y in enumerate(rows):
        fy = np.float32(y) * sy
        y0, y1 = int(np.floor(fy)), min(int(np.ceil(fy)), in_h - 1)
        dy = np.float32(fy - np.floor(fy))
        for j, x in enumerate(cols):
            fx = np.float32(x) * sx
            x0, x1 = int(np.floor(fx)), min(int(np.ceil(fx)), in_w - 1)
            dx = np.float32(fx - np.floor(fx))
            top = img[:, y0, x0] + (img[:, y0, x1] - img[:, y0, x0]) * dx
            bottom = img[:, y1, x0] + (img[:, y1, x1] - img[:, y1, x0]) * dx
            out[:, i, j] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize("shape, size", [((2, 5, 7), 11), ((1, 9, 6), 4), ((3, 8, 8), 8)])
def test_resize_is_tensorflow1_bilinear(shape, size):
    img = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    got = resize_bilinear_tf1(torch.from_numpy(img)[None], size)[0].numpy()
    np.testing.assert_allclose(got, tf1_resize_reference(img, size, size), rtol=0, atol=1e-4)
    if shape[1:] != (size, size):  # not PyTorch's half-pixel resize
        torch_resize = F.interpolate(torch.from_numpy(img)[None], size=(size, size),
                                     mode="bilinear", align_corners=False)[0].numpy()
        assert np.abs(torch_resize - got).max() > 1


@pytest.fixture(scope="module")
def run():
    """One forward of two 23x31 images through a random network, with what the hooks saw."""
    torch.manual_seed(0)
    net = InceptionV3FID()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
        net.fc.bias.fill_(3.0)
    seen = {}

    def keep(name, inputs=False):
        return lambda m, i, o: seen.__setitem__(name, (i[0] if inputs else o).detach())
    hooks = [net.Conv2d_1a_3x3.conv.register_forward_hook(keep("conv_in", True)),
             net.Mixed_6d.branch1x1.register_forward_hook(keep("mixed_6/conv")),
             net.Mixed_6d.branch1x1.conv.register_forward_hook(keep("mixed_6/conv/Conv2D")),
             net.Mixed_7c.register_forward_hook(keep("mixed_10/join")),
             net.Mixed_5b.branch_pool.register_forward_hook(keep("5b_pool", True)),
             net.Mixed_5b.register_forward_hook(keep("5b_in", True)),
             net.Mixed_7c.branch_pool.register_forward_hook(keep("7c_pool", True)),
             net.Mixed_7c.register_forward_hook(keep("7c_in", True))]
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 3, 23, 31),
                                                                 dtype=np.uint8))
    with torch.no_grad():
        out = net(images)
    for h in hooks:
        h.remove()
    return net, images, out, seen


def test_shapes_and_parameter_count(run):
    net, _, out, _ = run
    assert out["pool"].shape == (2, 2048)
    assert out["logits"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 17 * 17 * 7)
    # torchvision's inception_v3 without AuxLogits: 23,834,568 parameters with a 1000-way fc;
    # the graph's 1008-way softmax adds 8 · 2049.
    assert sum(p.numel() for p in net.parameters()) == 23_834_568 + 8 * 2049


def test_input_is_resized_as_tf1_then_sub_128_mul_1_over_128(run):
    _, images, _, seen = run
    rows, cols = [*range(0, 299, 13), 298], [*range(0, 299, 11), 298]
    expected = np.stack([tf1_resize_reference(img.numpy().astype(np.float32), 299, 299, rows, cols)
                         for img in images])
    got = seen["conv_in"][:, :, rows][..., cols].numpy()
    np.testing.assert_allclose(got, (expected - 128) / 128, atol=1e-6)


def test_spatial_is_mixed_6_conv_after_batchnorm_and_relu_in_nhwc_order(run):
    _, _, out, seen = run
    relu = seen["mixed_6/conv"]                      # Mixed_6d.branch1x1: conv, BN, ReLU
    assert relu.shape == (2, 192, 17, 17) and relu.min() == 0 and (relu > 0).any()
    expected = relu.permute(0, 2, 3, 1)[..., :7].reshape(2, -1)   # TF: [..., :7] of NHWC
    torch.testing.assert_close(out["spatial"], expected, rtol=0, atol=0)
    raw = seen["mixed_6/conv/Conv2D"].permute(0, 2, 3, 1)[..., :7].reshape(2, -1)
    assert (raw < 0).any() and not torch.allclose(out["spatial"], raw)


def test_pool_3_and_the_bias_free_logits_matmul(run):
    net, _, out, seen = run
    torch.testing.assert_close(out["pool"], seen["mixed_10/join"].mean(dim=(2, 3)))
    torch.testing.assert_close(out["logits"], out["pool"] @ net.fc.weight.t())
    assert (net(torch.zeros(0, 3, 299, 299))["logits"].shape == (0, 1008))
    assert not torch.allclose(out["logits"], net.fc(out["pool"]))  # the bias (3.0) is unused


def test_pools_follow_the_graph(run):
    _, _, _, seen = run
    # mixed/tower_2/pool: TF SAME average pooling, the padding not counted.
    x = seen["5b_in"]
    ones = F.pad(torch.ones_like(x[:, :1]), (1, 1, 1, 1))
    sums = F.avg_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=1) * 9
    counts = F.avg_pool2d(ones, 3, stride=1) * 9
    torch.testing.assert_close(seen["5b_pool"], sums / counts)
    # mixed_10/tower_2/pool: a max pool.
    torch.testing.assert_close(seen["7c_pool"], F.max_pool2d(seen["7c_in"], 3, 1, 1))


# ---- weight files -----------------------------------------------------------------------------

def random_inception_state(seed=1):
    """A random state dict of the network's shapes (no num_batches_tracked, as pytorch-fid's
    file): He-scaled convolutions and batch norms with a bias, so activations neither vanish
    into subnormal floats (which run ~100x slower on CPUs) nor explode."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in InceptionV3FID().state_dict().items()
                  if not k.endswith("num_batches_tracked")}
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, s in shapes.items():
        if k.endswith("conv.weight") or k == "fc.weight":
            state[k] = torch.randn(s, generator=g) * (2 / s[1:].numel()) ** 0.5
        elif k.endswith("running_var"):
            state[k] = torch.rand(s, generator=g) + 0.5
        elif k.endswith("bn.weight"):
            state[k] = torch.rand(s, generator=g) * 0.5 + 0.75
        else:  # biases and running means
            state[k] = torch.rand(s, generator=g) * 0.4 - 0.2
    return state


@pytest.fixture(scope="module")
def random_state():
    return random_inception_state()


def test_state_dict_files_round_trip(tmp_path, random_state):
    from safetensors.torch import save_file
    torch.save(random_state, tmp_path / "w.pth")
    save_file(random_state, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        loaded = load_inception(tmp_path / name).state_dict()
        for k, v in random_state.items():
            assert torch.equal(loaded[k], v), (name, k)


def test_bad_weight_files_are_clear_errors(tmp_path, random_state):
    state = random_state
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_inception(tmp_path / "nope.pth")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(InceptionWeightsError, match="could not read .*text.pth"):
        load_inception(tmp_path / "text.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InceptionWeightsError, match="junk.safetensors"):
        load_inception(tmp_path / "junk.safetensors")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "nofc.pth")
    with pytest.raises(InceptionWeightsError, match=r"2 missing keys \['fc.bias', 'fc.weight'\]"):
        load_inception(tmp_path / "nofc.pth")
    torch.save(dict(state, **{"fc.weight": torch.zeros(1000, 2048)}), tmp_path / "fc1000.pth")
    with pytest.raises(InceptionWeightsError, match=r"fc.weight: \[1000, 2048\] \(expected \[1008"):
        load_inception(tmp_path / "fc1000.pth")
    torch.save({"model": {"fc.weight": torch.zeros(1)}}, tmp_path / "nested.pth")
    with pytest.raises(InceptionWeightsError, match="does not hold a state dict"):
        load_inception(tmp_path / "nested.pth")


# ---- classify_image_graph_def.pb, encoded here with a minimal protobuf writer --------------------

def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number, wire, payload):
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _const(name, arr, packed_floats=False):
    arr = np.asarray(arr, np.float32)
    shape = b"".join(_field(2, 2, _field(1, 0, _varint(d))) for d in arr.shape)
    values = (_field(5, 2, arr.astype("<f4").tobytes()) if packed_floats
              else _field(4, 2, arr.astype("<f4").tobytes()))
    tensor = _field(1, 0, _varint(1)) + _field(2, 2, shape) + values
    return _node(name, "Const", {"dtype": _field(6, 0, _varint(1)), "value": _field(8, 2, tensor)})


def _node(name, op, attrs):
    body = _field(1, 2, name.encode()) + _field(2, 2, op.encode())
    for key, value in attrs.items():
        body += _field(5, 2, _field(1, 2, key.encode()) + _field(2, 2, value))
    return _field(1, 2, body)


def _graph(state, eps=0.001, scale_after=True, drop=None):
    nodes = [_node("ExpandDims", "ExpandDims", {})]
    for scope, ours in tf_layer_names().items():
        nodes.append(_const(f"{scope}/conv2d_params",
                            state[f"{ours}.conv.weight"].permute(2, 3, 1, 0).numpy()))
        for tf_name, key in (("beta", "bias"), ("gamma", "weight"), ("moving_mean", "running_mean"),
                             ("moving_variance", "running_var")):
            nodes.append(_const(f"{scope}/batchnorm/{tf_name}", state[f"{ours}.bn.{key}"].numpy(),
                                packed_floats=tf_name == "beta"))
        nodes.append(_node(f"{scope}/batchnorm", "BatchNormWithGlobalNormalization", {
            "variance_epsilon": _field(4, 5, struct.pack("<f", eps)),
            "scale_after_normalization": _field(5, 0, _varint(int(scale_after)))}))
    nodes.append(_const("softmax/weights", state["fc.weight"].t().numpy()))
    nodes.append(_const("softmax/biases", state["fc.bias"].numpy()))
    return b"".join(n for n in nodes if drop is None or drop.encode() not in n[:80])


def test_graph_layer_names():
    names = tf_layer_names()
    # Pairs read off the graph's node listing and the published conversions.
    for tf, ours in [("conv", "Conv2d_1a_3x3"), ("conv_4", "Conv2d_4a_3x3"),
                     ("mixed/tower/conv_1", "Mixed_5b.branch5x5_2"),
                     ("mixed_3/conv", "Mixed_6a.branch3x3"), ("mixed_6/conv", "Mixed_6d.branch1x1"),
                     ("mixed_8/tower_1/conv_3", "Mixed_7a.branch7x7x3_4"),
                     ("mixed_10/tower_1/mixed/conv_1", "Mixed_7c.branch3x3dbl_3b")]:
        assert names[tf] == ours
    convs = {n[:-len(".conv")] for n, m in InceptionV3FID().named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    assert len(names) == 94 and set(names.values()) == convs


def test_graph_def_is_read_without_tensorflow(tmp_path, random_state):
    from fastguide.eval.inception_graph import read_inception_graph
    (tmp_path / "g.pb").write_bytes(_graph(random_state))
    loaded = load_inception(tmp_path / "g.pb").state_dict()
    for k, v in random_state.items():
        assert torch.equal(loaded[k], v), k
    # Small stand-in tensors for the rest: the reader maps names, load_inception checks shapes.
    tiny = {k: torch.rand(2, 1, 1, 3) if k.endswith("conv.weight") else torch.rand(3)
            for k in random_state}
    tiny["fc.weight"] = torch.rand(4, 3)
    # scale_after_normalization=False: the graph ignores gamma, so the weight read is 1.
    (tmp_path / "noscale.pb").write_bytes(_graph(tiny, scale_after=False))
    read = read_inception_graph(tmp_path / "noscale.pb")
    assert torch.equal(read["Mixed_6d.branch1x1.bn.weight"], torch.ones(3))
    assert torch.equal(read["Mixed_6d.branch1x1.bn.bias"], tiny["Mixed_6d.branch1x1.bn.bias"])
    assert torch.equal(read["fc.weight"], tiny["fc.weight"])
    (tmp_path / "eps.pb").write_bytes(_graph(tiny, eps=1e-5))
    with pytest.raises(InceptionWeightsError, match="conv/batchnorm has ε = 1e-05"):
        read_inception_graph(tmp_path / "eps.pb")
    (tmp_path / "other.pb").write_bytes(_graph(tiny, drop="softmax/weights"))
    with pytest.raises(InceptionWeightsError, match="has no node 'softmax/weights'"):
        load_inception(tmp_path / "other.pb")
    (tmp_path / "junk.pb").write_bytes(b"\xff" * 40)
    with pytest.raises(InceptionWeightsError, match="could not read .* as a TensorFlow GraphDef"):
        load_inception(tmp_path / "junk.pb")
