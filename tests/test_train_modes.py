"""Every `train.precision` and `train.compile` mode trains as the plain fp32 eager step does: each
precision's loss curve (the tiny CPU preset's model) lands in the fp32 band; each compiled step
computes the eager loss curve (VGG-16 LargeFOV, whose graph compiles quickly).

Dropout is off in these runs: compiled code draws its dropout masks from another generator than
eager code, and the loss curves could not be compared step by step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deeplab_core.data.synth import render_scene, void_borders
from deeplab_core.inference import predict_probabilities
from deeplab_core.metrics import ConfusionMatrix
from deeplab_core.models import build_model
from deeplab_core.schedules import lr_scheduler
from deeplab_core.checkpoint import unwrap
from deeplab_core.train_step import (autocast_dtype, buffers_change, compile_mode, compile_model, grad_scaler,
                                     preferred_memory_format, train_step)
from pipelines.config import ConfigError, load_config
from pipelines.training import optimizer_for

CLASSES = 3          # background + 2 object classes: learnable in a few dozen steps on 2 cores
# What a mode must show holds at this size (measured: fp32 eager 1.09 -> 0.28 mean loss over 20 steps;
# fp16/bf16 end within 6% of it; compiled = eager to 1e-7): fp16 is emulated on CPUs (its convolution
# backward took 117 s for the 60 steps at 48² and batch 8 this module used to run), compilation is paid per model.
STEPS, BATCH, SIZE = 20, 4, 32
# The compile modes on the paper's VGG-16 LargeFOV: a short graph (compiling it takes a third of the
# time of the tiny preset's MobileNetV3 + v3+ decoder) that learns from scratch at this learning rate.
COMPILED = ["model.name=deeplabv2_vgg16_largefov", "model.options={}", "train.base_lr=2e-4"]


def scenes(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    pairs = [render_scene(np.random.default_rng([seed, i]), size, size, range(1, CLASSES), max_objects=2,
                          scale_range=(0.35, 0.8))[:2] for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([void_borders(p[1], 1) for p in pairs])


@pytest.fixture(scope="module")
def data():
    return scenes(STEPS * BATCH // 4, 1), scenes(8, 2)


def train_tiny(data, precision: str, compile_mode: str, overrides=(), steps: int = STEPS,
               batch: int = BATCH) -> tuple[list[float], float]:
    """The tiny preset's model and optimizer (configs/synthetic_tiny.yaml, with `overrides`), trained
    in-process for `steps` steps; returns the loss of every step and the val mIoU."""
    cfg = load_config("configs/synthetic_tiny.yaml", ["data.uri=in-memory", *overrides])
    (images, labels), (val_images, val_labels) = data
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(cfg.model.name, CLASSES, **cfg.model.options).to(memory_format=preferred_memory_format(device))
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    optimizer = optimizer_for(cfg, model, device)
    scheduler = lr_scheduler(optimizer, cfg.train.lr_policy, steps, cfg.train.poly_power)
    dtype = autocast_dtype(precision, device)
    net, scaler = compile_model(model, compile_mode, device), grad_scaler(dtype, device)
    model.train()
    losses = []
    for step in range(steps):
        k = (step * batch) % len(images)
        batch_ = {"image": torch.from_numpy(images[k:k + batch]), "label": torch.from_numpy(labels[k:k + batch])}
        losses.append(train_step(net, optimizer, scaler, batch_, device, dtype))
        scheduler.step()
    model.eval()
    cm = ConfusionMatrix(CLASSES)
    for image, label in zip(val_images, val_labels):
        cm.update(predict_probabilities(model, image).argmax(0), label)
    return torch.stack(losses).tolist(), cm.miou()


def learns(losses: list[float]) -> bool:
    return all(np.isfinite(losses)) and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def in_band(losses: list[float], reference: list[float], width: float) -> bool:
    """The curve ends where the reference's does: mean of the last 5 steps within `width`."""
    return abs(np.mean(losses[-5:]) / np.mean(reference[-5:]) - 1) < width


def test_the_plain_step_learns():
    """60 steps at 48² (the mIoU needs them: 0.23, background only, after 40): the val mIoU leaves the
    model's after one step (measured: 0.02) well behind."""
    longer = scenes(120, 1, size=48), scenes(8, 2, size=48)
    losses, miou = train_tiny(longer, "fp32", "none", steps=60, batch=8)
    assert learns(losses) and miou > 0.35, (losses, miou)


# The modes of one family are checked in one test, against one reference run, so that the reference
# runs once and the compile modes share inductor's compilation (the two pytest workers would each run
# the reference of a parametrised pair, and compile the same graph side by side).
def test_every_precision_lands_in_the_fp32_band(data):
    reference, _ = train_tiny(data, "fp32", "none")
    assert learns(reference), reference
    for precision in ("fp16", "bf16"):
        losses, _ = train_tiny(data, precision, "none")
        assert learns(losses), (precision, losses)
        assert in_band(losses, reference, 0.25), (precision, losses, reference)


@pytest.mark.slow
def test_every_compile_mode_keeps_the_loss_curve(data):
    eager, _ = train_tiny(data, "fp32", "none", COMPILED)
    assert np.mean(eager[-5:]) < 0.8 * np.mean(eager[:5]), eager  # it learns
    for mode in ("default", "reduce-overhead"):
        losses, _ = train_tiny(data, "fp32", mode, COMPILED)
        # Same weights, same data: the compiled step computes what eager does. After a few Adam steps
        # rounding differences can grow, so later steps get a band.
        np.testing.assert_allclose(losses[:3], eager[:3], rtol=1e-3, err_msg=mode)
        assert in_band(losses, eager, 0.2), (mode, losses, eager)


def test_compile_auto_is_cuda_graphs_on_gpus_and_eager_on_cpus():
    assert compile_mode("auto", torch.device("cuda")) == "reduce-overhead"
    assert compile_mode("auto", torch.device("cpu")) == "none"
    assert compile_mode("default", torch.device("cpu")) == "default"
    assert load_config("configs/synthetic_tiny.yaml").train.compile == "none"  # opt-in until GPU losses match
    with pytest.raises(ConfigError, match="train.compile: 'fast' is not valid; valid: auto, none, default, reduce-overhead"):
        load_config("configs/synthetic_tiny.yaml", ["train.compile=fast"])


def test_frozen_bn_needs_no_buffer_broadcast_and_compiled_models_unwrap():
    frozen = build_model("deeplabv2_resnet50_aspp_l", 3, bn="frozen")
    plain = build_model("deeplabv2_resnet50_aspp_l", 3, bn="plain")
    assert not buffers_change(frozen) and buffers_change(plain)
    assert unwrap(compile_model(plain, "default", torch.device("cpu"))) is plain
