"""What the benchmarks share."""
from __future__ import annotations

from pathlib import Path

import torch

from deeplab_core.checkpoint import save_model
from deeplab_core.data.labels import VOC
from deeplab_core.models import build_model


def save_voc_model(directory: Path, seed: int = 0) -> Path:
    """A 21-class deeplabv3plus_mobilenetv3 (width 0.5) with random weights, saved as training saves."""
    torch.manual_seed(seed)
    save_model(directory, build_model("deeplabv3plus_mobilenetv3", VOC.num_classes, width_mult=0.5),
               {"name": "deeplabv3plus_mobilenetv3", "num_classes": VOC.num_classes, "options": {"width_mult": 0.5},
                "msc_scales": None, **VOC.to_dict()})
    return directory
