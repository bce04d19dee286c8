"""`build_model(name, num_classes, **options)`: every DeepLab / FCN variant by name.

Names are `<family>_<backbone>[_<head>]`:
  deeplabv2_{vgg16,resnet50,resnet101,mobilenetv3}_{largefov,aspp_s,aspp_l}
  deeplabv3_{resnet50,resnet101,mobilenetv3}, deeplabv3plus_{resnet50,resnet101,mobilenetv3}
  fcn{8,16,32}s_vgg16
Options are the keyword arguments of the backbone and head builders the name selects (plus
`bn`, `msc_scales`); anything else is refused with the valid ones named.
"""
from __future__ import annotations

import inspect

from torch import nn

from . import backbones as bb
from .fcn import FCNHead
from .heads import ASPP_L, ASPP_S, ASPPv2, DeepLabV3PlusHead, LargeFOV, deeplabv3_head
from .msc import MSC
from .segmentation import SegmentationModel


def _vgg16(backbone_weights=None, style: str = "torchvision"):
    return bb.vgg16_deeplab(backbone_weights, style)


def _resnet(depth):
    def build(output_stride: int = 8, multi_grid=None, bn: str = "plain", backbone_weights=None,
              style: str = "torchvision"):
        return bb.resnet(depth, output_stride, multi_grid, bn, backbone_weights, style)
    return build


def _mobilenetv3(output_stride: int = 16, width_mult: float = 1.0, bn: str = "plain", backbone_weights=None):
    return bb.mobilenetv3(output_stride, width_mult, bn, backbone_weights)


BACKBONES = {"vgg16": _vgg16, "resnet50": _resnet(50), "resnet101": _resnet(101), "mobilenetv3": _mobilenetv3}


def _largefov(backbone, num_classes, fc_kernel: int = 3, fc_rate: int = 12, fc_channels: int = 1024,
              dropout: float = 0.5):
    return SegmentationModel(backbone, LargeFOV(backbone.channels["out"], num_classes, fc_kernel, fc_rate,
                                                fc_channels, dropout))


def _aspp_v2(preset):
    # Branch depth follows the released models: fc6-fc7-fc8 branches of 1024 on VGG-16,
    # a single atrous conv per branch on ResNet / MobileNet (aspp_channels=None).
    def build(backbone, num_classes, rates=preset, aspp_channels="auto", dropout: float = 0.5):
        if aspp_channels == "auto":
            aspp_channels = 1024 if backbone.channels["out"] == 512 else None
        return SegmentationModel(backbone, ASPPv2(backbone.channels["out"], num_classes, tuple(rates),
                                                  aspp_channels, dropout))
    return build


def _deeplabv3(backbone, num_classes, output_stride):
    return SegmentationModel(backbone, deeplabv3_head(backbone.channels["out"], num_classes, output_stride))


def _deeplabv3plus(backbone, num_classes, output_stride):
    return SegmentationModel(backbone, DeepLabV3PlusHead(backbone.channels["out"], backbone.channels["low"],
                                                         num_classes, output_stride), head_takes_all=True)


def _fcn(stride):
    def build(num_classes, backbone_weights=None, fc_channels: int = 4096, dropout: float = 0.5):
        return SegmentationModel(bb.vgg16_fcn(backbone_weights), FCNHead(num_classes, stride, fc_channels, dropout),
                                 head_takes_all=True, crop=True)
    return build


def _registry() -> dict[str, tuple]:
    """name -> (backbone builder or None, head builder, backbone defaults)."""
    models = {}
    for backbone in BACKBONES:
        for head, build in (("largefov", _largefov), ("aspp_s", _aspp_v2(ASPP_S)), ("aspp_l", _aspp_v2(ASPP_L))):
            models[f"deeplabv2_{backbone}_{head}"] = (BACKBONES[backbone], build, {})
    for backbone in ("resnet50", "resnet101", "mobilenetv3"):
        models[f"deeplabv3_{backbone}"] = (BACKBONES[backbone], _deeplabv3, {})
        models[f"deeplabv3plus_{backbone}"] = (BACKBONES[backbone], _deeplabv3plus,
                                               {"output_stride": 16})
    for stride in (8, 16, 32):
        models[f"fcn{stride}s_vgg16"] = (None, _fcn(stride), {})
    return models


MODELS = _registry()


def _keywords(fn, skip=("backbone", "num_classes", "output_stride")) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in skip}


def model_options(name: str) -> dict:
    """The options `name` accepts, with their defaults."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
    backbone_fn, head_fn, defaults = MODELS[name]
    options = {} if backbone_fn is None else {**_keywords(backbone_fn, ()), **defaults}
    options.update(_keywords(head_fn))
    return {**options, "msc_scales": None}


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a model by name; `forward(N×3×H×W) -> N×C×H×W` logits at the input size.

    `bn`: "plain" (default), "frozen" (DeepLab v2: BN statistics and affine fixed) or "sync"
    (SyncBatchNorm for DDP on GPUs). `msc_scales` wraps the model in MSC (e.g. (1, 0.75, 0.5)).
    `backbone_weights`: a local file with the torchvision backbone's state dict."""
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    backbone_fn, head_fn, defaults = MODELS[name]
    options = {**defaults, **options}
    msc_scales = options.pop("msc_scales", None)
    head_keys = set(_keywords(head_fn))
    head_options = {k: v for k, v in options.items() if k in head_keys}
    if backbone_fn is None:
        model = head_fn(num_classes=num_classes, **head_options)
    else:
        backbone_options = {**_keywords(backbone_fn, ()), **{k: v for k, v in options.items() if k not in head_keys}}
        backbone = backbone_fn(**backbone_options)
        if head_fn in (_deeplabv3, _deeplabv3plus):  # ASPP v3 rates follow the output stride
            head_options["output_stride"] = backbone_options["output_stride"]
        model = head_fn(backbone, num_classes, **head_options)
    if options.get("bn") == "sync":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return MSC(model, msc_scales) if msc_scales else model
