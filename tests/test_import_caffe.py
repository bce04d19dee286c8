"""Importing a released DeepLab-v2 Caffe model: a synthetic caffemodel in the released naming and
shapes (ResNet-101 ASPP-L), written here by an encoder of our own (not the importer's reader),
imported, and checked against a forward pass computed here from the raw blobs with Caffe's rules."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deeplab_core.checkpoint import load_model
from deeplab_core.inference import coarse_scores
from pipelines.import_caffe import import_caffe, main
from pipelines.model_uri import download_model
from tests.conftest import sqlite_store

MEAN_BGR = (104.008, 116.669, 122.675)
STAGES = [(2, 3, 64, 1, 1), (3, 4, 128, 2, 1), (4, 23, 256, 1, 2), (5, 3, 512, 1, 4)]  # stage, blocks, width, stride, rate
ASPP_RATES = (6, 12, 18, 24)


# --- protobuf wire format, written out by hand ---------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_int(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def blob(array: np.ndarray) -> bytes:
    shape = field_bytes(1, b"".join(varint(d) for d in array.shape))  # BlobShape.dim, packed
    return field_bytes(7, shape) + field_bytes(5, array.astype("<f4").tobytes())


def layer(name: str, kind: str, blobs=(), conv=None, pool=None) -> bytes:
    body = field_bytes(1, name.encode()) + field_bytes(2, kind.encode())
    body += b"".join(field_bytes(7, blob(b)) for b in blobs)
    if conv:  # ConvolutionParameter: num_output 1, bias_term 2, pad 3, kernel_size 4, stride 6, dilation 18
        k, s, p, d, bias, out = conv
        c = field_int(1, out) + field_int(2, int(bias)) + field_int(3, p) + field_int(4, k) + field_int(6, s)
        body += field_bytes(106, c + (field_int(18, d) if d != 1 else b""))
    if pool:  # PoolingParameter: pool 1 (MAX 0), kernel_size 2, stride 3, pad 4
        k, s, p = pool
        body += field_bytes(121, field_int(1, 0) + field_int(2, k) + field_int(3, s) + field_int(4, p))
    return field_bytes(100, body)  # NetParameter.layer


# --- the released ResNet-101 DeepLab-v2, as named blobs ------------------------------------------
def block_names(stage: int, blocks: int) -> list[str]:
    if blocks <= 3:
        return [f"res{stage}{chr(ord('a') + i)}" for i in range(blocks)]
    return [f"res{stage}a"] + [f"res{stage}b{i}" for i in range(1, blocks)]


def released_net(rng: np.random.Generator, num_classes: int) -> list[dict]:
    """The layers in Caffe's order: conv / BatchNorm (mean, var, factor) / Scale (γ, β)."""
    net = []

    def conv(name, cin, cout, k, s=1, p=0, d=1, bias=False, gain=1.0):
        w = rng.normal(0, gain * math.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        blobs = [w] + ([rng.normal(0, 0.1, cout)] if bias else [])
        net.append(dict(name=name, type="Convolution", blobs=blobs, conv=(k, s, p, d, bias, cout)))

    def bn(suffix, c, gamma=1.0):
        factor = rng.uniform(50, 1000)  # Caffe's moving-average normaliser
        net.append(dict(name=f"bn{suffix}", type="BatchNorm",
                        blobs=[rng.normal(0, 0.2, c) * factor, rng.uniform(0.5, 2.0, c) * factor, np.array([factor])]))
        net.append(dict(name=f"scale{suffix}", type="Scale",
                        blobs=[rng.uniform(0.5, 1.5, c) * gamma, rng.normal(0, 0.1, c)]))

    conv("conv1", 3, 64, 7, 2, 3, gain=1 / 60)  # inputs are 0-255 minus the mean
    bn("_conv1", 64)
    net.append(dict(name="pool1", type="Pooling", blobs=[], pool=(3, 2, 1)))
    cin = 64
    for stage, blocks, width, stride, rate in STAGES:
        for i, name in enumerate(block_names(stage, blocks)):
            s = stride if i == 0 else 1
            tag = name[3:]
            if i == 0:
                conv(f"{name}_branch1", cin, 4 * width, 1, s)
                bn(f"{tag}_branch1", 4 * width)
            conv(f"{name}_branch2a", cin, width, 1, s)
            bn(f"{tag}_branch2a", width)
            conv(f"{name}_branch2b", width, width, 3, 1, rate, rate)
            bn(f"{tag}_branch2b", width)
            conv(f"{name}_branch2c", width, 4 * width, 1)
            bn(f"{tag}_branch2c", 4 * width, gamma=0.2)  # residual branches small, as in trained nets
            cin = 4 * width
    for i, r in enumerate(ASPP_RATES):
        conv(f"fc1_voc12_c{i}", 2048, num_classes, 3, 1, r, r, bias=True, gain=0.1)
    # An MSC copy shares its weights: the importer must skip it.
    net.append(dict(name="fc1_voc12_c0_res075", type="Convolution", blobs=net[-4]["blobs"], conv=net[-4]["conv"]))
    return net


def encode(net: list[dict]) -> bytes:
    return b"".join(layer(n["name"], n["type"], n["blobs"], n.get("conv"), n.get("pool")) for n in net)


# --- Caffe's forward, from the raw blobs ----------------------------------------------------------
def caffe_forward(net: list[dict], bgr_minus_mean: np.ndarray) -> torch.Tensor:
    L = {n["name"]: [torch.from_numpy(np.asarray(b, np.float64)) for b in n["blobs"]] for n in net}
    G = {n["name"]: n.get("conv") for n in net}

    def conv(x, name):
        k, s, p, d, bias, _ = G[name]
        return F.conv2d(x, L[name][0], L[name][1] if bias else None, stride=s, padding=p, dilation=d)

    def bn_scale(x, suffix):
        mean, var, factor = L[f"bn{suffix}"]
        f = 0.0 if factor.item() == 0 else 1.0 / factor.item()
        x = (x - (mean * f).view(1, -1, 1, 1)) / torch.sqrt((var * f).view(1, -1, 1, 1) + 1e-5)
        gamma, beta = L[f"scale{suffix}"]
        return x * gamma.view(1, -1, 1, 1) + beta.view(1, -1, 1, 1)

    x = torch.from_numpy(bgr_minus_mean.astype(np.float64)).permute(2, 0, 1)[None]
    x = caffe_max_pool(torch.relu(bn_scale(conv(x, "conv1"), "_conv1")), 3, 2, 1)
    for stage, blocks, *_ in STAGES:
        for i, name in enumerate(block_names(stage, blocks)):
            tag = name[3:]
            shortcut = bn_scale(conv(x, f"{name}_branch1"), f"{tag}_branch1") if i == 0 else x
            y = torch.relu(bn_scale(conv(x, f"{name}_branch2a"), f"{tag}_branch2a"))
            y = torch.relu(bn_scale(conv(y, f"{name}_branch2b"), f"{tag}_branch2b"))
            x = torch.relu(shortcut + bn_scale(conv(y, f"{name}_branch2c"), f"{tag}_branch2c"))
    return sum(conv(x, f"fc1_voc12_c{i}") for i in range(4))


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    net = released_net(np.random.default_rng(0), 21)
    path = tmp_path_factory.mktemp("caffe") / "train2_iter_20000.caffemodel"
    path.write_bytes(encode(net))
    return net, path


def test_a_released_resnet101_imports_and_predicts_as_caffe(released, tmp_path):
    net, path = released
    out = tmp_path / "deeplabv2_voc12"
    summary = import_caffe(str(path), "deeplabv2_resnet101_aspp_l", 21, str(out))
    assert summary["msc_copies_skipped"] == 1 and not summary["classifier_fresh"]
    model, spec = load_model(out)
    assert spec["options"] == {"style": "caffe", "bn": "frozen", "output_stride": 8}
    assert spec["input_normalization"]["bgr"] and spec["input_normalization"]["mean"] == list(MEAN_BGR)
    assert spec["trained_long_side"] == 500  # VOC's scale, from --dataset

    # The released geometry: stride on branch2a, every res4 block at rate 2, res5 at 4, no biases.
    body = model.backbone
    assert body.layer2[0].conv1.stride == (2, 2) and body.layer2[0].conv2.stride == (1, 1)
    assert {b.conv2.dilation for b in body.layer3} == {(2, 2)} and {b.conv2.padding for b in body.layer4} == {(4, 4)}
    assert body.conv1.bias is None and body.maxpool.ceil_mode
    # BatchNorm statistics divided by the scale factor, Scale folded into the affine.
    bn = {n["name"]: n["blobs"] for n in net}
    mean, var, factor = bn["bn4b17_branch2b"]
    torch.testing.assert_close(body.layer3[17].bn2.running_var.double(), torch.from_numpy(var / factor[0]))
    torch.testing.assert_close(body.layer3[17].bn2.weight.double(), torch.from_numpy(bn["scale4b17_branch2b"][0]))
    torch.testing.assert_close(model.classifier.branches[3].bias.double(), torch.from_numpy(bn["fc1_voc12_c3"][1]))

    # Inference applies the Caffe input (BGR, 0-255, minus the mean pixel) by itself.
    image = np.random.default_rng(1).integers(0, 256, (65, 81, 3), dtype=np.uint8)
    ours = coarse_scores(model, image[None])[0].double()
    theirs = caffe_forward(net, image[..., ::-1].astype(np.float64) - np.array(MEAN_BGR))[0]
    assert ours.shape == theirs.shape == (21, 9, 11)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4 * theirs.abs().max().item())


def test_a_head_of_another_class_count_needs_allow_missing(released, tmp_path):
    net, _ = released
    coco = [n for n in net if not n["name"].startswith("fc1_")] + released_net(np.random.default_rng(2), 91)[-5:]
    path = tmp_path / "init.caffemodel"
    path.write_bytes(encode(coco))
    with pytest.raises(ValueError, match="not in the file: classifier.branches.0.bias"):
        import_caffe(str(path), "deeplabv2_resnet101_aspp_l", 21, str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
    summary = import_caffe(str(path), "deeplabv2_resnet101_aspp_l", 21, str(tmp_path / "b"), allow_missing=True)
    assert summary["classifier_fresh"] and summary["head_skipped"] == [f"fc1_voc12_c{i}" for i in range(4)]
    model, spec = load_model(tmp_path / "b")
    assert spec["source"]["classifier_fresh"] == [f"classifier.branches.{i}" for i in range(4)]
    torch.testing.assert_close(model.backbone.conv1.weight, torch.from_numpy(coco[0]["blobs"][0]).float())


@pytest.mark.parametrize("damage", ["truncated", "not a caffemodel", "missing"])
def test_a_damaged_file_is_one_error_line(released, tmp_path, capsys, run, damage):
    _, path = released
    bad = tmp_path / "bad.caffemodel"
    if damage == "truncated":
        bad.write_bytes(path.read_bytes()[: 3_000_000])
    elif damage == "not a caffemodel":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    code = run(main, ["--caffemodel", str(bad), "--model", "deeplabv2_resnet101_aspp_l", "--num-classes", "21",
                      "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and str(bad) in err[-1], err
    assert not (tmp_path / "out").exists()


def caffe_max_pool(x: torch.Tensor, k: int, s: int, p: int) -> torch.Tensor:
    """Caffe's max pooling: sizes rounded up, a window that would start in the padding dropped."""
    h, w = x.shape[-2:]
    size = []
    for n in (h, w):
        out = math.ceil((n + 2 * p - k) / s) + 1
        if (out - 1) * s >= n + p:
            out -= 1
        size.append(out)
    x = F.pad(x, (p, (size[1] - 1) * s + k - w - p, p, (size[0] - 1) * s + k - h - p), value=-math.inf)
    return F.max_pool2d(x, k, s)


VGG_BLOCKS = [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]


def vgg_largefov_net(rng: np.random.Generator, num_classes: int) -> list[dict]:
    """DeepLab-LargeFOV: conv1_1..conv5_3 (conv5 at rate 2), pools 3×3 (stride 2, 2, 2, 1, 1),
    fc6 3×3 at rate 12 to 1024, fc7 1×1, fc8_voc12 1×1 to the classes; all with biases."""
    net, cin = [], 3

    def conv(name, cin, cout, k, p=0, d=1, gain=1.0):
        w = rng.normal(0, gain * math.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k))
        net.append(dict(name=name, type="Convolution", blobs=[w, rng.normal(0, 0.1, cout)],
                        conv=(k, 1, p, d, True, cout)))

    for block, convs, width in VGG_BLOCKS:
        for i in range(1, convs + 1):
            rate = 2 if block == 5 else 1
            conv(f"conv{block}_{i}", cin, width, 3, rate, rate, gain=1 / 60 if cin == 3 else 1.0)
            cin = width
        net.append(dict(name=f"pool{block}", type="Pooling", blobs=[], pool=(3, 2 if block <= 3 else 1, 1)))
    conv("fc6", 512, 1024, 3, 12, 12)
    conv("fc7", 1024, 1024, 1)
    conv("fc8_voc12", 1024, num_classes, 1, gain=0.1)
    return net


def test_a_released_vgg16_largefov_imports_registers_and_predicts_as_caffe(tmp_path, monkeypatch, capsys, run):
    net = vgg_largefov_net(np.random.default_rng(3), 21)
    path = tmp_path / "train_iter_6000.caffemodel"
    path.write_bytes(encode(net))
    uri = sqlite_store(tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test (the CLI sets it for its process)
    code = run(main, ["--caffemodel", str(path), "--model", "deeplabv2_vgg16_largefov", "--num-classes", "21",
                      "--out", str(tmp_path / "largefov"), "--register", "deeplab-caffe-largefov", "--tracking-uri", uri])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["model_uri"] == "models:/deeplab-caffe-largefov/1"
    model, spec = load_model(download_model(summary["model_uri"], str(tmp_path / "fetched")))
    assert spec["options"] == {"style": "caffe"}
    image = np.random.default_rng(4).integers(0, 256, (50, 66, 3), dtype=np.uint8)  # even sizes: Caffe rounds up

    L = {n["name"]: [torch.from_numpy(np.asarray(b, np.float64)) for b in n["blobs"]] for n in net}
    G = {n["name"]: n.get("conv") or n.get("pool") for n in net}
    x = torch.from_numpy(image[..., ::-1].astype(np.float64) - np.array(MEAN_BGR)).permute(2, 0, 1)[None]
    for n in net:
        if n["type"] == "Pooling":
            x = caffe_max_pool(x, *G[n["name"]])
        else:
            k, s, p, d, _, _ = G[n["name"]]
            x = F.conv2d(x, *L[n["name"]], stride=s, padding=p, dilation=d)
            x = x if n["name"].startswith("fc8") else torch.relu(x)
    ours = coarse_scores(model, image[None])[0].double()
    assert ours.shape == x[0].shape == (21, 8, 10)  # floor rounding would give 7 × 9
    torch.testing.assert_close(ours, x[0], rtol=1e-4, atol=1e-4 * x.abs().max().item())


def test_init_from_a_caffe_model_needs_the_caffe_style(tmp_path):
    from pipelines.config import load_config
    from pipelines.train import warm_start

    saved = tmp_path / "imported"
    saved.mkdir()
    (saved / "model.json").write_text(json.dumps({"name": "deeplabv2_resnet101_aspp_l", "num_classes": 21,
                                                  "options": {"style": "caffe", "bn": "frozen"}}))
    cfg = load_config("configs/voc_resnet101_aspp_l.yaml", [f"model.init_from={saved}", "data.uri=unused"])
    with pytest.raises(ValueError, match="is a caffe-style model; set model.options.style=caffe"):
        warm_start(cfg, {}, "no-run")
    caffe_preset = load_config("configs/voc_resnet101_aspp_l_caffe.yaml", ["data.uri=unused"])
    assert caffe_preset.model.options["style"] == "caffe" and caffe_preset.model.init_from
