"""The model zoo: parameter counts from the paper, output sizes, options, MSC, overfitting."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from deeplab_core.data.synth import render_scene, void_borders
from deeplab_core.losses import param_groups, segmentation_loss
from deeplab_core.metrics import ConfusionMatrix
from deeplab_core.models import MODELS, MSC, build_model, tta_probabilities
from deeplab_core.models.fcn import bilinear_kernel, upsample


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("options, millions", [
    ({"fc_kernel": 7, "fc_rate": 4, "fc_channels": 4096}, 134.3),
    ({"fc_kernel": 4, "fc_rate": 4, "fc_channels": 4096}, 65.1),
    ({}, 20.5),  # the default: 3×3 at rate 12, 1024 channels
])
def test_largefov_parameter_counts_match_the_paper(options, millions):
    assert round(n_params(build_model("deeplabv2_vgg16_largefov", 21, **options)) / 1e6, 1) == millions


def test_deeplabv3_resnet101_has_torchvisions_parameter_count():
    ours = build_model("deeplabv3_resnet101", 21)
    theirs = torchvision.models.segmentation.deeplabv3_resnet101(weights=None, weights_backbone=None,
                                                                 num_classes=21, aux_loss=False)
    assert n_params(ours) == n_params(theirs)


def test_aspp_v2_sums_branch_logits_with_the_paper_rates():
    model = build_model("deeplabv2_resnet101_aspp_l", 21)
    assert [b.dilation[0] for b in model.classifier.branches] == [6, 12, 18, 24]
    vgg = build_model("deeplabv2_vgg16_aspp_s", 21)
    assert [b[0].dilation[0] for b in vgg.classifier.branches] == [2, 4, 8, 12]
    x = torch.randn(1, 512, 9, 9)
    head = vgg.classifier.eval()
    assert torch.allclose(head(x), sum(b(x) for b in head.branches), atol=1e-5)


def test_vgg16_deeplab_has_output_stride_8_and_dilated_conv5():
    model = build_model("deeplabv2_vgg16_largefov", 21)
    out = model.backbone(torch.zeros(1, 3, 321, 321))["out"]
    assert out.shape[-1] == 41  # ceil(321 / 8)
    dilations = [m.dilation[0] for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert dilations[-3:] == [2, 2, 2] and set(dilations[:-3]) == {1}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_come_back_at_input_size(name):
    """Odd sizes, 32k + 1 (as the paper's 321 and 513: a centre pixel at every output stride) and a
    multiple of 32; small, since what decides the output size is the size modulo the stride."""
    model = build_model(name, 5).eval()
    with torch.no_grad():
        for h, w in ((97, 131), (65, 65), (64, 96)):
            assert model(torch.zeros(1, 3, h, w)).shape == (1, 5, h, w)


def test_unknown_names_and_options_are_refused_naming_the_valid_ones():
    with pytest.raises(ValueError, match="valid: .*deeplabv2_vgg16_largefov"):
        build_model("deeplabv9", 21)
    with pytest.raises(ValueError, match=r"unknown option\(s\) width_mult; valid: .*fc_rate"):
        build_model("deeplabv2_vgg16_largefov", 21, width_mult=2)
    with pytest.raises(ValueError, match="valid: frozen, sync, plain"):
        build_model("deeplabv3_resnet50", 21, bn="weird")
    with pytest.raises(ValueError, match="output_stride"):
        build_model("deeplabv3_resnet50", 21, output_stride=4)


def test_bn_modes():
    frozen = build_model("deeplabv2_resnet50_aspp_s", 3, bn="frozen")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.backbone.modules())
    synced = build_model("deeplabv3_mobilenetv3", 3, bn="sync", width_mult=0.5)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    plain = build_model("deeplabv3_resnet50", 3)
    assert any(type(m) is torch.nn.BatchNorm2d for m in plain.backbone.modules())


def test_multi_grid_sets_layer4_dilations():
    model = build_model("deeplabv3_resnet50", 3, output_stride=16, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [2, 4, 8]


def test_backbone_weights_load_weights_only_with_a_strict_key_check(tmp_path):
    net = torchvision.models.resnet50(weights=None)
    torch.nn.init.constant_(net.conv1.weight, 0.5)
    good = tmp_path / "resnet50.pth"
    torch.save(net.state_dict(), good)
    model = build_model("deeplabv3_resnet50", 3, backbone_weights=str(good))
    assert torch.all(model.backbone.conv1.weight == 0.5)
    bad = tmp_path / "bad.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("layer4")}, bad)
    with pytest.raises(ValueError, match="missing keys.*layer4"):
        build_model("deeplabv3_resnet50", 3, backbone_weights=str(bad))
    pickled = tmp_path / "pickled.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": object()}, pickled)
    with pytest.raises(ValueError, match="not a weights-only state dict"):
        build_model("deeplabv3_resnet50", 3, backbone_weights=str(pickled))


def test_fcn_deconvolutions_start_as_bilinear_interpolation():
    up = upsample(1, 2)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = up(x)
    assert y.shape == (1, 1, 8, 8)
    # interior samples of a linear ramp stay on the ramp
    assert torch.allclose(y[0, 0, 2:6, 3] - y[0, 0, 2:6, 2], torch.full((4,), 0.5))
    assert torch.allclose(bilinear_kernel(1, 4)[0, 0, 1:3, 1:3], torch.full((2, 2), 0.5625))
    model = build_model("fcn8s_vgg16", 4)
    assert torch.equal(model.classifier.upscore.weight, bilinear_kernel(4, 16))


def test_msc_returns_every_scale_and_the_max_in_training():
    torch.manual_seed(0)
    base = build_model("deeplabv2_mobilenetv3_aspp_s", 3, width_mult=0.5)
    msc = MSC(base, (1, 0.75, 0.5))
    x = torch.randn(2, 3, 65, 81)
    msc.train()
    outputs = msc(x)
    assert len(outputs) == 4 and all(o.shape == (2, 3, 65, 81) for o in outputs)
    assert torch.equal(outputs[-1], torch.stack(outputs[:3]).amax(0))
    msc.eval()
    assert msc(x).shape == (2, 3, 65, 81)
    loss = segmentation_loss(outputs, torch.randint(0, 3, (2, 65, 81)))
    loss.backward()
    wrapped = build_model("deeplabv2_mobilenetv3_aspp_s", 3, width_mult=0.5, msc_scales=(1, 0.5))
    assert isinstance(wrapped, MSC) and wrapped.scales == (1.0, 0.5)


def test_tta_averages_flipped_and_scaled_probabilities():
    model = build_model("deeplabv2_mobilenetv3_aspp_s", 3, width_mult=0.5).eval()
    x = torch.randn(1, 3, 49, 57)
    probs = tta_probabilities(model, x, scales=(1.0, 0.75), flip=True)
    assert probs.shape == (1, 3, 49, 57) and torch.allclose(probs.sum(1), torch.ones(1, 49, 57), atol=1e-5)
    plain = tta_probabilities(model, x)
    with torch.no_grad():
        assert torch.allclose(plain, model(x).softmax(1), atol=1e-6)


def test_classifier_gets_ten_times_the_learning_rate():
    model = build_model("deeplabv2_resnet50_aspp_s", 3, bn="frozen")
    groups = param_groups(model, 2.5e-4)
    assert groups[1]["lr"] == pytest.approx(2.5e-3) and groups[0]["lr"] == pytest.approx(2.5e-4)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.classifier.parameters()}


def test_a_tiny_model_overfits_eight_synthetic_images():
    torch.manual_seed(0)
    images, labels = [], []
    for i in range(8):
        image, label, _ = render_scene(np.random.default_rng([5, i]), 64, 64, range(1, 5), max_objects=3,
                                       scale_range=(0.25, 0.6))
        images.append(image)
        labels.append(void_borders(label, 1))
    x = torch.tensor(np.stack(images)).permute(0, 3, 1, 2).float().div(255).sub(0.45).div(0.225)
    y = torch.tensor(np.stack(labels)).long()
    model = build_model("deeplabv3plus_mobilenetv3", 5, width_mult=0.5)
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    for _ in range(150):
        loss = segmentation_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        prediction = model(x).argmax(1).numpy()
    assert ConfusionMatrix(5).update(prediction, y.numpy()).miou() >= 0.9
