"""Learning-rate policies of DeepLab: "poly" (per iteration) and "step"."""
from __future__ import annotations

import torch

LR_POLICIES = ("poly", "step")


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """base_lr * (1 - iter/max_iter)^power, the policy DeepLab v2 found better than step."""
    return base_lr * (1 - min(iteration, max_iterations) / max_iterations) ** power


def step_lr(base_lr: float, iteration: int, step_size: int, gamma: float = 0.1) -> float:
    """base_lr * gamma^(iter // step_size)."""
    return base_lr * gamma ** (iteration // step_size)


def lr_scheduler(optimizer: torch.optim.Optimizer, policy: str, max_iterations: int, power: float = 0.9,
                 step_size: int | None = None, gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler (call `.step()` after every optimizer step) that scales every
    parameter group's own initial LR, so the classifier's 10× multiplier is kept."""
    if policy == "poly":
        factor = lambda it: poly_lr(1.0, it, max_iterations, power)  # noqa: E731
    elif policy == "step":
        step = step_size or max(1, max_iterations // 3)
        factor = lambda it: step_lr(1.0, it, step, gamma)  # noqa: E731
    else:
        raise ValueError(f"unknown LR policy {policy!r}; valid: {', '.join(LR_POLICIES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
