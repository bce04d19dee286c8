"""The saved-model format every stage shares: a directory with `model.pt` (the state dict of the
plain model, never pickled objects) and `model.json` (how to rebuild it). Loading uses
`torch.load(weights_only=True)`."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .models import MSC
from .models.segmentation import unwrap  # noqa: F401 (callers import it from here too)

MODEL_FILE = "model.pt"
SPEC_FILE = "model.json"


def save_model(directory: str | os.PathLike, model: nn.Module, spec: dict) -> None:
    """`spec`: name, num_classes, options (build_model's), msc_scales (or None), and any metadata
    (dataset, classes, palette) the consumers need."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save(state, directory / MODEL_FILE)
    (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1))


def matching_state(model: nn.Module, state: dict) -> tuple[dict, list[str]]:
    """The tensors of `state` that `model` has under the same name and shape (what a warm start
    loads: with another class count, everything but the classifier's last layers), and the names of
    the model's tensors left as they are."""
    own = unwrap(model).state_dict()
    loaded = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    return loaded, sorted(set(own) - set(loaded))


def read_state(directory: str | os.PathLike, map_location="cpu") -> dict:
    """The weights-only state dict of a saved model."""
    path = Path(directory) / MODEL_FILE
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: model weights missing") from None
    except Exception as e:
        raise ValueError(f"{path}: refused, not a weights-only state dict ({type(e).__name__})") from None


def read_spec(directory: str | os.PathLike) -> dict:
    path = Path(directory) / SPEC_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not a saved model (no {SPEC_FILE})") from None


def load_model(directory: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild and load a saved model (eval mode), its tensors where `map_location` puts them.
    Refuses anything but a weights-only state dict."""
    spec = read_spec(directory)
    state = read_state(directory, map_location)
    from .models import build_model  # torchvision: only where a model is built (models/__init__.py)
    # Built without storage and filled from the file: random initialisation would be thrown away
    # (VGG-16's costs ~2.5 CPU-s in every actor that loads it). Strict loading leaves nothing unset.
    with torch.device("meta"):
        model = build_model(spec["name"], spec["num_classes"], **spec.get("options", {}))
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}, assign=True)
    if spec.get("msc_scales"):
        model = MSC(model, spec["msc_scales"])
    return model.eval(), spec
