"""InceptionV3 exactly as guided-diffusion's evaluator runs it: the TensorFlow graph
`classify_image_graph_def.pb` (inception-2015-12-05), rebuilt in PyTorch.

fastguide never downloads weights. Pass the path of that graph's weights converted to a state
dict with pytorch-fid's key names (its pt_inception-2015-12-05-6726825d.pth, torch-fidelity's
weights-inception-2015-12-05-6726825d.pth, or either re-saved as .safetensors), or the graph
file itself (read without TensorFlow, see inception_graph.py).

    net = load_inception("pt_inception-2015-12-05-6726825d.pth")
    out = net(images)    # images [N, 3, H, W], pixel values 0..255 (uint8 or float), any H, W
    out["pool"]     [N, 2048]        FID, precision and recall features
    out["spatial"]  [N, 17·17·7]     sFID features
    out["logits"]   [N, 1008]        Inception Score (before the softmax)

What the evaluator takes from the graph, node by node (names from the graph definition; every
convolution layer there is a scope S holding S/conv2d_params, S/Conv2D, S/batchnorm
(BatchNormWithGlobalNormalization, ε = 0.001), S/CheckNumerics, and the node named S itself,
the ReLU, so "S:0" is a layer's output after batch norm and ReLU):

    ExpandDims:0          the evaluator feeds its float32 NHWC batch, values 0..255, here
    ResizeBilinear        to 299x299, TF1 semantics (align_corners=False, no half-pixel
                          centres): resize_bilinear_tf1 below, not F.interpolate
    Sub, Mul              (x − 128) · 1/128
    mixed_6/conv:0        FID_SPATIAL_NAME: the 1x1 branch of the 7th mixed block (mixed,
                          mixed_1 .. mixed_10 are torchvision's Mixed_5b .. Mixed_7c, so this is
                          Mixed_6d.branch1x1) after its batch norm and ReLU, [N, 17, 17, 192]
                          NHWC; the evaluator keeps [..., :7] and flattens h, w, c in that order
    pool_3:0              FID_POOL_NAME: the 8x8 average pool of mixed_10/join, [N, 1, 1, 2048]
    softmax/logits/MatMul pool_3/_reshape times softmax/weights [2048, 1008]; the evaluator
                          takes this MatMul's weight input and computes softmax(pool · W)
                          itself, so the logits here have no bias (softmax/biases is unused)

FID's InceptionV3 also differs from torchvision's: the average pools in the mixed blocks exclude
the padding (TF "SAME" pooling), and the last block max-pools its pool branch.
"""
import pathlib

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import spatial_features

__all__ = ["InceptionV3FID", "load_inception", "resize_bilinear_tf1", "InceptionWeightsError",
           "SPATIAL_CHANNELS", "NUM_LOGITS"]

SPATIAL_CHANNELS = 7  # the evaluator's spatial[..., :7]
NUM_LOGITS = 1008     # the 2015 graph's classifier: 1000 ImageNet classes + 8 unused


class InceptionWeightsError(ValueError):
    """An Inception weight file that is not the FID InceptionV3 (wrong format, keys or shapes)."""


class BasicConv2d(nn.Module):
    """conv2d_params (no bias) -> batchnorm (ε = 0.001) -> ReLU: one scope of the graph."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        # The graph's join concatenates conv, tower, tower_1, tower_2 in this order, so the
        # first 192 channels are the 1x1 branch ("mixed_N/conv").
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.pool = pool  # "avg" (Mixed_7b = mixed_9) or "max" (Mixed_7c = mixed_10)
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = _avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


def _tf1_source_index(in_size, out_size, device):
    """TF1's legacy scaler: source = out · (in / out) in float32, its floor, the next index
    (clamped), and the fraction."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lo = src.floor()
    frac = (src - lo).to(device)
    lo = lo.long().clamp(max=in_size - 1)
    hi = torch.ceil(src).long().clamp(max=in_size - 1)
    return lo.to(device), hi.to(device), frac


def resize_bilinear_tf1(x, size):
    """[N, C, H, W] float -> [N, C, size, size] as TF 1.x's ResizeBilinear(align_corners=False):
    pixel i samples the input at i·(in/out) (no half-pixel offset), interpolating along x
    first, then y: top = tl + (tr − tl)·dx, bottom = bl + (br − bl)·dx, top + (bottom − top)·dy."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    y0, y1, dy = _tf1_source_index(h, size, x.device)
    x0, x1, dx = _tf1_source_index(w, size, x.device)
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * dx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * dx
    return top + (bottom - top) * dy[:, None]


class InceptionV3FID(nn.Module):
    """Random weights when built directly; load_inception() gives the real network."""

    def __init__(self, num_logits=NUM_LOGITS):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = (
            InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64))
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, "avg"), InceptionE(2048, "max")
        self.fc = nn.Linear(2048, num_logits)  # softmax/weights (+ softmax/biases, unused)
        self.eval()

    @classmethod
    def from_weights(cls, path):
        return load_inception(path)

    def forward(self, images):
        x = resize_bilinear_tf1(images.float(), 299)   # ResizeBilinear
        x = (x - 128) / 128                            # Sub, Mul
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x))))
        spatial = spatial_features(x, SPATIAL_CHANNELS)  # mixed_6/conv:0[..., :7], NHWC order
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean(dim=(2, 3))                      # pool_3:0
        logits = pool @ self.fc.weight.t()             # softmax/logits/MatMul: no bias
        return {"pool": pool, "logits": logits, "spatial": spatial}


def load_inception(path, device="cpu"):
    """InceptionV3FID with the weights in path: a state dict (.pth / .pt / .safetensors) with
    pytorch-fid's key names, or the graph itself (classify_image_graph_def.pb)."""
    if path is None or not pathlib.Path(path).is_file():
        raise FileNotFoundError(
            f"InceptionV3 weights not found at {str(path)!r}. fastguide never downloads them: "
            "pass guided-diffusion's classify_image_graph_def.pb or pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth")
    path = pathlib.Path(path)
    state = _read_weights(path)
    with torch.device("meta"):  # shapes only: no random initialisation of 24M parameters
        net = InceptionV3FID()
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for k in expected:  # pytorch-fid's file has no num_batches_tracked (unused in eval mode)
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.tensor(0)
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"{k}: {list(got[k])} (expected {list(s)})" for k, s in expected.items()
             if k in got and got[k] != s]
    if missing or unexpected or wrong:
        raise InceptionWeightsError(
            f"{path} is not the FID InceptionV3 (2015-12-05) state dict: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
            f"{unexpected[:3]}, {len(wrong)} wrongly shaped {wrong[:3]}")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                        strict=True, assign=True)
    return net.to(device).eval()


def _read_weights(path):
    if path.suffix == ".pb":
        from .inception_graph import read_inception_graph
        return read_inception_graph(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise InceptionWeightsError(f"could not read {path} as safetensors: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and EOF errors all mean: not weights)
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise InceptionWeightsError(
            f"could not read {path} as a PyTorch state dict ({type(e).__name__}: {first}); "
            "expected "
            "pytorch-fid's pt_inception-2015-12-05-6726825d.pth, a .safetensors of it, or "
            "classify_image_graph_def.pb") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InceptionWeightsError(f"{path} does not hold a state dict (a flat dict of tensors)")
    return state
