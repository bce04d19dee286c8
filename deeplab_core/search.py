"""Coarse-to-fine grid search, as DeepLab tuned its CRF: a coarse grid over each axis's range, then
finer grids centred on the best point so far."""
from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np


def coarse_to_fine(score: Callable[[list[dict]], Sequence[float]], axes: dict[str, tuple[float, float]],
                   points: int = 3, rounds: int = 2) -> tuple[dict, float, list[tuple[dict, float]]]:
    """Maximise `score` over the box `axes` (name -> (low, high)).

    `score` takes a whole grid of settings at once (so the caller can evaluate them in parallel).
    Round 1 spans each range with `points` values; each later round spans best ± half the previous
    step, clipped to the range. Returns (best setting, its score, every (setting, score) evaluated)."""
    if points < 2 or rounds < 1:
        raise ValueError(f"coarse_to_fine needs points >= 2 and rounds >= 1, got {points}, {rounds}")
    bounds = {name: (float(lo), float(hi)) for name, (lo, hi) in axes.items()}
    table: list[tuple[dict, float]] = []
    seen: dict[tuple, float] = {}
    best, best_score = None, -np.inf
    for _ in range(rounds):
        grids = {name: np.linspace(lo, hi, points) for name, (lo, hi) in bounds.items()}
        settings = [dict(zip(grids, (round(float(v), 6) for v in values)))
                    for values in itertools.product(*grids.values())]
        new = [s for s in settings if tuple(s.values()) not in seen]
        for setting, value in zip(new, score(new)):
            seen[tuple(setting.values())] = float(value)
            table.append((setting, float(value)))
            if value > best_score:
                best, best_score = setting, float(value)
        steps = {name: (hi - lo) / (points - 1) for name, (lo, hi) in bounds.items()}
        bounds = {name: (max(axes[name][0], best[name] - steps[name] / 2), min(axes[name][1], best[name] + steps[name] / 2))
                  for name in bounds}
    return best, best_score, table
