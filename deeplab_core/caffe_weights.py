"""The released DeepLab-v2 Caffe layers -> the tensors of our Caffe-style models.

ResNet-101 (`style="caffe"`): `conv1` / `bn_conv1` / `scale_conv1`, then per block
`res{2..5}{a,b,c | a,b1..b22}_branch{1,2a,2b,2c}` with `bn…` and `scale…` companions, and the
ASPP-L classifier `fc1_<dataset>_c{0..3}`. VGG-16 (LargeFOV, ASPP): `conv1_1 … conv5_3`, then
`fc6`, `fc7`, `fc8_<dataset>` (ASPP: `fc6_1 … fc8_<dataset>_4`).

Caffe's BatchNorm stores (mean, variance, scale factor); the statistics are the first two divided
by the third. Its Scale layer holds the affine γ, β, folded here into the frozen BN's weight and
bias. The MSC copies of a layer (`*_res075`, `*_res05`) share its weights and are skipped. Every
placed blob's shape, and the geometry of every convolution and pooling layer, must equal the model's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .caffemodel import CaffeLayer, CaffeModelError
from .models.segmentation import unwrap

MSC_COPY = re.compile(r"_res\d+$")
RESNET_BRANCH = re.compile(r"^(res|bn|scale)(\d)([a-z])(\d*)_branch(1|2a|2b|2c)$")
STEM = {"conv1": "conv1", "bn_conv1": "bn1", "scale_conv1": "bn1"}
BRANCH = {"1": ("downsample.0", "downsample.1"), "2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"),
          "2c": ("conv3", "bn3")}
RESNET_HEAD = re.compile(r"^fc1_(?:\w+_)?c(\d)$")
VGG_CONV = re.compile(r"^conv(\d)_(\d)$")
VGG_HEAD = re.compile(r"^fc([678])(?:_[a-z]\w*?)?(?:_(\d))?$")


@dataclass
class CaffeImport:
    """What an import placed: the state dict to load, and what it could not use or fill."""
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)      # layers with weights that have no place
    head_skipped: list[str] = field(default_factory=list)  # classifier layers of another class count
    msc_copies: int = 0
    missing: list[str] = field(default_factory=list)       # model tensors no layer filled


def _block_index(letter: str, number: str) -> int:
    """`a` -> 0, `b`, `c` -> 1, 2 (ResNet-50 style) and `b1`..`b22` -> 1..22 (ResNet-101)."""
    return int(number) if number else ord(letter) - ord("a")


def _resnet_module(name: str) -> tuple[str, str] | None:
    """Caffe layer name -> (module path in the backbone, "conv"|"bn"|"scale")."""
    if name in STEM:
        return STEM[name], {"conv1": "conv", "bn_conv1": "bn", "scale_conv1": "scale"}[name]
    m = RESNET_BRANCH.match(name)
    if not m:
        return None
    kind, stage, letter, number, branch = m.groups()
    conv, bn = BRANCH[branch]
    path = f"layer{int(stage) - 1}.{_block_index(letter, number)}.{conv if kind == 'res' else bn}"
    return path, {"res": "conv", "bn": "bn", "scale": "scale"}[kind]


def _vgg_module(name: str, backbone: nn.Module) -> tuple[str, str] | None:
    m = VGG_CONV.match(name)
    if m:
        convs = [n for n, mod in backbone.named_modules() if isinstance(mod, nn.Conv2d)]
        index = [2, 2, 3, 3, 3][: int(m.group(1)) - 1]
        k = sum(index) + int(m.group(2)) - 1
        return (f"backbone.{convs[k]}", "conv") if k < len(convs) else None
    m = VGG_HEAD.match(name)
    if not m:
        return None
    layer = {"6": 0, "7": 3, "8": 6}[m.group(1)]
    branch = m.group(2)
    return (f"classifier.branches.{int(branch) - 1}.{layer}" if branch else f"classifier.{layer}"), "conv"


def _conv_geometry(module: nn.Conv2d) -> dict:
    return {"kernel": tuple(module.kernel_size), "stride": tuple(module.stride), "pad": tuple(module.padding),
            "dilation": tuple(module.dilation)}


def _check_geometry(layer: CaffeLayer, module: nn.Module) -> None:
    if layer.conv is not None and isinstance(module, nn.Conv2d):
        theirs = {k: tuple(layer.conv[k]) for k in ("kernel", "stride", "pad", "dilation")}
        if theirs != _conv_geometry(module):
            raise CaffeModelError(f"layer {layer.name}: Caffe geometry {theirs} but the model has "
                                  f"{_conv_geometry(module)}")


def check_pooling(layers: list[CaffeLayer], model: nn.Module) -> None:
    """Caffe's pooling layers, in order, against the model's max-pooling modules in order."""
    pools = [layer for layer in layers if layer.pool is not None and not MSC_COPY.search(layer.name)
             and not layer.pool["global"]]
    ours = [m for m in unwrap(model).backbone.modules() if isinstance(m, nn.MaxPool2d)]
    if len(pools) != len(ours):
        raise CaffeModelError(f"the file has {len(pools)} pooling layers ({', '.join(p.name for p in pools)}), "
                              f"the model {len(ours)}: not the same network")

    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)
    for layer, module in zip(pools, ours):
        mine = {"kernel": pair(module.kernel_size), "stride": pair(module.stride), "pad": pair(module.padding),
                "ceil": bool(module.ceil_mode)}
        theirs = {k: layer.pool[k] for k in mine}
        if layer.pool["method"] != "max" or theirs != mine:
            raise CaffeModelError(f"layer {layer.name}: Caffe pooling {layer.pool['method']} {theirs} but the model "
                                  f"has max {mine}")


def caffe_state(layers: list[CaffeLayer], model: nn.Module) -> CaffeImport:
    """Map every layer with weights onto `model` (a Caffe-style SegmentationModel)."""
    model = unwrap(model)
    modules = dict(model.named_modules())
    own = model.state_dict()
    is_resnet = "backbone.layer1" in modules
    out = CaffeImport()

    def put(key: str, value: np.ndarray, layer: str) -> bool:
        if key not in own:
            return False
        if tuple(own[key].shape) != value.shape:
            if key.startswith("classifier.") and own[key].shape[0] != value.shape[0]:
                out.head_skipped.append(layer)  # another class count (COCO's head into a VOC model)
                return True
            raise CaffeModelError(f"layer {layer}: blob of shape {value.shape} for {key}, which is "
                                  f"{tuple(own[key].shape)}")
        out.state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        return True

    for layer in layers:
        if not layer.blobs:
            continue
        if MSC_COPY.search(layer.name):
            out.msc_copies += 1
            continue
        if is_resnet:
            m = RESNET_HEAD.match(layer.name)
            place = (f"classifier.branches.{m.group(1)}", "conv") if m else None
            if place is None:
                found = _resnet_module(layer.name)
                place = (f"backbone.{found[0]}", found[1]) if found else None
        else:
            place = _vgg_module(layer.name, modules["backbone"])
        if place is None or place[0] not in modules:
            out.unplaced.append(layer.name)
            continue
        path, kind = place
        if kind == "conv":
            _check_geometry(layer, modules[path])
            if not put(f"{path}.weight", layer.blobs[0], layer.name):
                out.unplaced.append(layer.name)
            if len(layer.blobs) > 1 and layer.name not in out.head_skipped:
                if not put(f"{path}.bias", layer.blobs[1], layer.name):
                    raise CaffeModelError(f"layer {layer.name}: has a bias, {path} has none")
        elif kind == "bn":
            if len(layer.blobs) < 3:
                raise CaffeModelError(f"layer {layer.name}: a BatchNorm needs mean, variance and scale factor blobs")
            eps = getattr(modules[path], "eps", 1e-5)
            if layer.bn_eps is not None and abs(layer.bn_eps - eps) > 1e-9:
                raise CaffeModelError(f"layer {layer.name}: eps {layer.bn_eps} but the model's BN uses {eps}")
            factor = float(layer.blobs[2].ravel()[0])
            scale = 0.0 if factor == 0 else 1.0 / factor  # Caffe's own rule for a zero factor
            put(f"{path}.running_mean", layer.blobs[0].ravel() * scale, layer.name)
            put(f"{path}.running_var", layer.blobs[1].ravel() * scale, layer.name)
        else:  # Scale: the BN's affine
            put(f"{path}.weight", layer.blobs[0].ravel(), layer.name)
            if len(layer.blobs) > 1:
                put(f"{path}.bias", layer.blobs[1].ravel(), layer.name)
    out.missing = sorted(k for k in own if k not in out.state and not k.endswith("num_batches_tracked"))
    return out
