"""Per-image prediction shared by validation, batch segmentation and evaluation."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data.transforms import normalize
from .models import tta_probabilities


def predict_probabilities(model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                          scales=(1.0,), flip: bool = False, amp: bool = False) -> np.ndarray:
    """H×W×3 uint8 -> C×H×W float32 class probabilities at the image's own resolution."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(image))[None].to(device))
    device_type = torch.device(device).type
    with torch.autocast(device_type, enabled=amp and device_type == "cuda"):
        probs = tta_probabilities(model, x, scales, flip)
    return probs[0].float().cpu().numpy()
