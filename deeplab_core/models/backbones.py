"""Dilated backbones built from torchvision (never downloading weights).

Each builder returns a `Backbone`: an IntermediateLayerGetter over the torchvision network that
returns named feature maps ("out" always; "low" for the v3+ decoder; "pool3"/"pool4" for FCN),
plus the channel count of each. Optional ImageNet weights load from a local file of the torchvision
model's own state dict, checked key by key.
"""
from __future__ import annotations

import os
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import misc

from ..data.transforms import CAFFE, IMAGENET

BN_MODES = ("frozen", "sync", "plain")
# torchvision: torchvision's layout, ImageNet RGB input. caffe: the released DeepLab-v2 Caffe models'
# layout (see `caffe_resnet_geometry`) and input (BGR, 0-255, minus the mean pixel).
STYLES = ("torchvision", "caffe")


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's frozen BN (same buffers, same state dict) computed as one inference-mode
    `batch_norm` kernel instead of seven elementwise ones: ResNet-101 has 104 of them, and at the
    paper's batch the GPU step is bound by kernel launches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Backbone(IntermediateLayerGetter):
    def __init__(self, model: nn.Module, return_layers: dict[str, str], channels: dict[str, int],
                 style: str = "torchvision"):
        super().__init__(model, return_layers)
        self.channels = channels
        self.normalization = CAFFE if style == "caffe" else IMAGENET


def check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")


def norm_layer(bn: str):
    """`frozen` is the DeepLab-v2 recipe (statistics and affine fixed); `sync` starts as plain BN and
    is converted to SyncBatchNorm by `build_model`."""
    if bn not in BN_MODES:
        raise ValueError(f"unknown bn mode {bn!r}; valid: {', '.join(BN_MODES)}")
    return FrozenBatchNorm2d if bn == "frozen" else nn.BatchNorm2d


def load_weights(model: nn.Module, weights: str | os.PathLike) -> None:
    """Load a torchvision state dict from a local file with `weights_only=True` and a strict key check."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{weights}: backbone weights file not found") from None
    except Exception as e:
        raise ValueError(f"{weights}: not a weights-only state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{weights}: expected a state dict, got {type(state).__name__}")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{weights}: does not fit {type(model).__name__}: missing keys "
                         f"{result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}, "
                         f"unexpected keys {result.unexpected_keys[:8]}"
                         f"{'...' if len(result.unexpected_keys) > 8 else ''}")


def _vgg16(weights) -> nn.Module:
    vgg = models.vgg16(weights=None)
    if weights:
        load_weights(vgg, weights)
    return vgg


def vgg16_deeplab(weights=None, style: str = "torchvision") -> Backbone:
    """VGG-16 as in DeepLab v1/v2: 3×3 pooling (stride 2, 2, 2, 1, 1), conv5 at dilation 2, so the
    output stride is 8. The Caffe style rounds pooled sizes up, as Caffe does (equal on odd sizes
    such as 321, one more row on even ones)."""
    check_style(style)
    features = _vgg16(weights).features
    pool_index = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    for n, i in enumerate(pool_index):
        features[i] = nn.MaxPool2d(3, stride=2 if n < 3 else 1, padding=1, ceil_mode=style == "caffe")
    for m in features[pool_index[3] + 1: pool_index[4]]:
        if isinstance(m, nn.Conv2d):
            m.dilation, m.padding = (2, 2), (2, 2)
    return Backbone(features, {str(pool_index[4]): "out"}, {"out": 512}, style)


def vgg16_fcn(weights=None) -> Backbone:
    """Plain VGG-16 (output stride 32, ceil-mode pooling as in Caffe) exposing pool3 and pool4 for
    the FCN skip paths."""
    features = _vgg16(weights).features
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    for i in pools:
        features[i] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    return Backbone(features, {str(pools[2]): "pool3", str(pools[3]): "pool4", str(pools[4]): "out"},
                    {"pool3": 256, "pool4": 512, "out": 512})


def caffe_resnet_geometry(net: nn.Module, output_stride: int) -> None:
    """Turn torchvision's (v1.5) dilated ResNet into the released DeepLab-v2 ResNet (MSRA's Caffe
    ResNet v1): the stride of each downsampling block on its 1×1 `branch2a` conv, not the 3×3;
    3×3 max pooling with padding 1 rounded up (Caffe's pooling arithmetic, as the PyTorch ports
    that reproduce the paper build it); and every block of a dilated stage at the stage's rate
    (res4 at 2, res5 at 4 for output stride 8), where torchvision keeps the first block of a stage
    at the previous rate."""
    net.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        first = layer[0]
        first.conv1.stride, first.conv2.stride = first.conv2.stride, (1, 1)
    rates = {"layer3": 2 if output_stride == 8 else 1, "layer4": 4 if output_stride == 8 else 2}
    for name, rate in rates.items():
        for block in getattr(net, name):
            block.conv2.dilation = block.conv2.padding = (rate, rate)


def resnet(depth: int = 101, output_stride: int = 8, multi_grid=None, bn: str = "frozen", weights=None,
           style: str = "torchvision") -> Backbone:
    """ResNet-50/101 with strides replaced by dilation for output stride 8 or 16. `multi_grid`
    (DeepLab v3, e.g. (1, 2, 4)) multiplies the dilation of layer4's three blocks. `style="caffe"`:
    the geometry of the released DeepLab-v2 models (`caffe_resnet_geometry`)."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    check_style(style)
    build = {50: models.resnet50, 101: models.resnet101}[depth]
    net = build(weights=None, norm_layer=norm_layer(bn),
                replace_stride_with_dilation=[False, output_stride == 8, True])
    if style == "caffe":
        caffe_resnet_geometry(net, output_stride)
    if weights:
        load_weights(net, weights)
    if multi_grid:
        if len(multi_grid) != len(net.layer4):
            raise ValueError(f"multi_grid needs {len(net.layer4)} rates, got {tuple(multi_grid)}")
        base = 4 if output_stride == 8 else 2
        for block, unit in zip(net.layer4, multi_grid):
            rate = base * unit
            block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
    return Backbone(net, {"layer1": "low", "layer4": "out"}, {"low": 256, "out": 2048}, style)


def mobilenetv3(output_stride: int = 16, width_mult: float = 1.0, bn: str = "frozen", weights=None) -> Backbone:
    """MobileNetV3-Large; output stride 16 dilates the last stage (torchvision's `dilated`), 32 keeps it."""
    if output_stride not in (16, 32):
        raise ValueError(f"MobileNetV3 output_stride must be 16 or 32, got {output_stride}")
    # Default BN momentum (not torchvision's 0.01 ImageNet recipe): short runs need fresh running stats.
    net = models.mobilenet_v3_large(weights=None, dilated=output_stride == 16, width_mult=width_mult,
                                    norm_layer=norm_layer(bn))
    if weights:
        load_weights(net, weights)
    features = net.features
    stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    low, out = stages[-4], stages[-1]  # C2 (stride 8) and the last layer
    return Backbone(features, {str(low): "low", str(out): "out"},
                    {"low": features[low].out_channels, "out": features[out].out_channels})
