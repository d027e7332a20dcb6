"""torch.compile(fullgraph=True) of a class-conditional UNet on the CPU (inductor), against
eager: the whole forward, custom ops and the label checks included, traces as one graph."""
import torch

from fastguide.nn import UNet
from fastguide.nn.base import input_checks
from test_adagn import rel_err


def test_class_conditional_unet_compiles_fullgraph():
    torch.manual_seed(0)
    # One level keeps inductor's compile time small; it still has every kind of layer: label
    # embedding, AdaGN ResBlocks, attention, skip concatenation.
    model = UNet(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=(1,), channel_mult=(1,), num_heads=2, num_classes=10,
                 use_scale_shift_norm=True).eval()
    for p in model.parameters():  # zero-initialised output convs would hide most of the graph
        torch.nn.init.normal_(p, std=0.05)
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([10, 500]), torch.tensor([3, 9])
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad(), input_checks(True):
        eager = model(x, t, y=y)
        out = compiled(x, t, y=y)
    assert out.shape == (2, 6, 8, 8)
    assert rel_err(out, eager) <= 1e-4
