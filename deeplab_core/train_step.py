"""One DeepLab training step and the settings that decide its speed: precision, compilation,
memory format and the optimizer's kernel. Plain PyTorch, no Ray: the trainer and `bench/gpu.py`
share it.

On a GPU the paper's step (ResNet-101 at batch 10, 321²) is launch-bound: the host issues kernels
more slowly than the GPU runs them. What removes host work without changing the arithmetic:
a fused optimizer (one kernel per parameter group, and no host sync under the fp16 loss scaler),
no host read of the loss per step (the caller reads a window of losses at once), channels_last
convolutions, and, opt-in, `torch.compile` with CUDA graphs (`reduce-overhead`), which replays the
whole forward and backward with one launch.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .data.labels import IGNORE_INDEX
from .data.transforms import normalize
from .losses import param_groups, segmentation_loss
from .models.segmentation import input_normalization

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
COMPILE_MODES = ("auto", "none", "default", "reduce-overhead")
OPTIMIZERS = ("sgd", "adam")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """`train.precision` on this device: the autocast dtype, or None for fp32. auto: bf16 where the
    GPU supports it (no loss scaling needed), else fp16; fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only: bf16 has fp32's exponent range."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def make_optimizer(model: nn.Module, name: str, base_lr: float, momentum: float = 0.9,
                   classifier_lr_mult: float = 10.0, weight_decay: float = 5e-4,
                   device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or Adam, the classifier at `classifier_lr_mult`× the base LR.
    On CUDA the fused kernels: one launch per group, and the fp16 scaler's inf check stays on the GPU."""
    groups = param_groups(model, base_lr, classifier_lr_mult, weight_decay)
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    if name == "sgd":
        return torch.optim.SGD(groups, lr=base_lr, momentum=momentum, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, lr=base_lr, **fused)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def preferred_memory_format(device: torch.device) -> torch.memory_format:
    # cuDNN's tensor-core convolutions run NHWC; on CPU the default layout is as fast.
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def compile_mode(mode: str, device: torch.device) -> str:
    """`train.compile` on this device. auto: reduce-overhead on a GPU (measured on an H200: 2.3-2.5×
    the eager bf16 step of ResNet-101 ASPP-L at batch 10, but its losses did not match the eager
    step's there, hence not the default), none on the CPU (compiling takes minutes there and the
    compiled step was slower)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if mode == "auto":
        return "reduce-overhead" if device.type == "cuda" else "none"
    return mode


def compile_model(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """The model as is, or `torch.compile`d per `compile_mode` (`reduce-overhead` adds CUDA graphs:
    the whole forward and backward replayed with one launch each). Compile the DDP-wrapped model, if
    any, so DDP still overlaps its all-reduce with backward."""
    mode = compile_mode(mode, device)
    return model if mode == "none" else torch.compile(model, mode=None if mode == "default" else mode)


def buffers_change(model: nn.Module) -> bool:
    """Whether training updates any buffer (BN running statistics): if not, DDP need not broadcast
    buffers before every forward (frozen BN, the paper's recipe, never changes them)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
               and not isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def train_step(model, optimizer, scaler, batches: dict | list[dict], device: torch.device,
               dtype: torch.dtype | None = None, memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """One SGD step on one batch of uint8 crops, or on several accumulated (`train.iter_size`):
    normalise, forward (autocast to `dtype` unless None), loss, backward, step. Accumulation is exact:
    each micro-batch's summed loss is divided by the valid pixels of all of them, and DDP all-reduces
    once, on the last backward. Returns the loss as a tensor on the device and never reads it: no
    host sync, so the host queues the next step while the GPU runs this one. The input is laid out in
`memory_format` (default: `preferred_memory_format`), which the model's weights should share."""
    batches = [batches] if isinstance(batches, dict) else batches
    targets = [b["label"].to(device, non_blocking=True).long() for b in batches]
    normalizer = None if len(batches) == 1 else sum((y != IGNORE_INDEX).sum() for y in targets).clamp_min(1)
    memory_format = memory_format or preferred_memory_format(device)
    normalization = input_normalization(model)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for k, (batch, y) in enumerate(zip(batches, targets)):
        x = normalize(batch["image"].to(device, non_blocking=True), normalization).contiguous(memory_format=memory_format)
        last = k == len(batches) - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = segmentation_loss(model(x), y, normalizer=normalizer)
            scaler.scale(loss).backward()
        total += loss.detach().float()
    scaler.step(optimizer)
    scaler.update()
    return total
