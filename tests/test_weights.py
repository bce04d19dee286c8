"""`model.init_weights: torchvision:<Weights>` through torch hub's cache, and the frozen-BN guard."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from deeplab_core.models import build_model
from pipelines.config import ConfigError, load_config
from pipelines.weights import local_weights_file, torchvision_weights_file

ROOT = Path(__file__).resolve().parents[1]
SPEC = "torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1"


def test_torchvision_weights_load_from_torch_hubs_cache_and_fail_clearly_without(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    expected = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_large-8738ca79.pth"
    with pytest.raises(FileNotFoundError) as e:  # no cache, and no network on this machine
        torchvision_weights_file(SPEC)
    message = str(e.value)
    assert str(expected) in message and "https://download.pytorch.org/models/mobilenet_v3_large-8738ca79.pth" in message
    assert "\n" not in message

    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v3_large().state_dict()  # what the real file holds, random here
    torch.save(state, expected)
    assert torchvision_weights_file(SPEC) == str(expected)
    model = build_model("deeplabv3plus_mobilenetv3", 21, backbone_weights=local_weights_file(SPEC, str(tmp_path)))
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(first_conv.weight, state["features.0.0.weight"])

    with pytest.raises(ValueError, match="'NoSuch_Weights.X' is not a torchvision weights name"):
        torchvision_weights_file("torchvision:NoSuch_Weights.X")


def test_frozen_batch_norm_without_weights_is_refused():
    base = str(ROOT / "configs" / "synthetic_tiny.yaml")
    with pytest.raises(ConfigError, match=r"model.options.bn=frozen needs pretrained weights: model.init_weights "
                                          r"\(.*\) or model.init_from \(a saved model\)"):
        load_config(base, ["model.options={width_mult: 0.5, bn: frozen}"])
    cfg = load_config(base, ["model.options={width_mult: 0.5, bn: frozen}", f"model.init_weights={SPEC}"])
    assert cfg.model.init_weights == SPEC
    cfg = load_config(base, ["model.options={width_mult: 0.5, bn: frozen}", "model.init_from=models:/coco/1"])
    assert cfg.model.init_from == "models:/coco/1"
    for preset in ROOT.glob("configs/*.yaml"):  # the paper presets say where their weights come from
        cfg = load_config(str(preset))
        assert (cfg.model.options.get("bn") != "frozen" or (cfg.model.init_weights or "").startswith("torchvision:")
                or cfg.model.init_from), preset
