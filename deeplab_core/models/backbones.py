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

BN_MODES = ("frozen", "sync", "plain")


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """torchvision's frozen BN (same buffers, same state dict) computed as one inference-mode
    `batch_norm` kernel instead of seven elementwise ones: ResNet-101 has 104 of them, and at the
    paper's batch the GPU step is bound by kernel launches."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Backbone(IntermediateLayerGetter):
    def __init__(self, model: nn.Module, return_layers: dict[str, str], channels: dict[str, int]):
        super().__init__(model, return_layers)
        self.channels = channels


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


def vgg16_deeplab(weights=None) -> Backbone:
    """VGG-16 as in DeepLab v1/v2: 3×3 pooling (stride 2, 2, 2, 1, 1), conv5 at dilation 2, so the
    output stride is 8."""
    features = _vgg16(weights).features
    pool_index = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    for n, i in enumerate(pool_index):
        features[i] = nn.MaxPool2d(3, stride=2 if n < 3 else 1, padding=1)
    for m in features[pool_index[3] + 1: pool_index[4]]:
        if isinstance(m, nn.Conv2d):
            m.dilation, m.padding = (2, 2), (2, 2)
    return Backbone(features, {str(pool_index[4]): "out"}, {"out": 512})


def vgg16_fcn(weights=None) -> Backbone:
    """Plain VGG-16 (output stride 32, ceil-mode pooling as in Caffe) exposing pool3 and pool4 for
    the FCN skip paths."""
    features = _vgg16(weights).features
    pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
    for i in pools:
        features[i] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
    return Backbone(features, {str(pools[2]): "pool3", str(pools[3]): "pool4", str(pools[4]): "out"},
                    {"pool3": 256, "pool4": 512, "out": 512})


def resnet(depth: int = 101, output_stride: int = 8, multi_grid=None, bn: str = "frozen", weights=None) -> Backbone:
    """ResNet-50/101 with strides replaced by dilation for output stride 8 or 16. `multi_grid`
    (DeepLab v3, e.g. (1, 2, 4)) multiplies the dilation of layer4's three blocks."""
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    build = {50: models.resnet50, 101: models.resnet101}[depth]
    net = build(weights=None, norm_layer=norm_layer(bn),
                replace_stride_with_dilation=[False, output_stride == 8, True])
    if weights:
        load_weights(net, weights)
    if multi_grid:
        if len(multi_grid) != len(net.layer4):
            raise ValueError(f"multi_grid needs {len(net.layer4)} rates, got {tuple(multi_grid)}")
        base = 4 if output_stride == 8 else 2
        for block, unit in zip(net.layer4, multi_grid):
            rate = base * unit
            block.conv2.dilation, block.conv2.padding = (rate, rate), (rate, rate)
    return Backbone(net, {"layer1": "low", "layer4": "out"}, {"low": 256, "out": 2048})


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
