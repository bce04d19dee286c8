"""Where `model.init_weights` comes from: a path or URI of a state dict file, or
`torchvision:<WeightsEnum>` (e.g. `torchvision:ResNet101_Weights.IMAGENET1K_V1`), resolved as the
PyTorch ecosystem does: torchvision's weights API names the file, torch hub's cache
(`$TORCH_HOME/hub/checkpoints/`) holds it; a cached file is used as it is (offline), a missing one is
downloaded there once."""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from urllib.parse import urlparse

from pipelines import storage

TORCHVISION = "torchvision:"


def is_torchvision(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(TORCHVISION)


def torchvision_weights_file(spec: str) -> str:
    """`torchvision:<WeightsEnum>` -> the local file in torch hub's cache; a clear one-line error
    naming the expected file and its URL when it is neither cached nor downloadable."""
    import torch
    from torchvision.models import get_weight

    name = spec[len(TORCHVISION):]
    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError, IndexError):
        raise ValueError(f"model.init_weights {spec}: {name!r} is not a torchvision weights name "
                         "(e.g. torchvision:ResNet101_Weights.IMAGENET1K_V1)") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(weights.url, str(path), progress=False)
        except (OSError, urllib.error.URLError) as e:
            raise FileNotFoundError(f"model.init_weights {spec}: {path} is not in torch hub's cache and "
                                    f"{weights.url} could not be downloaded ({e}); put the file there "
                                    "(TORCH_HOME sets the cache)") from None
    return str(path)


def local_weights_file(spec: str, directory: str) -> str:
    """The weights named by `model.init_weights` as a local file (read from storage into
    `directory` unless torchvision's cache has it)."""
    if is_torchvision(spec):
        return torchvision_weights_file(spec)
    local = Path(directory) / "backbone.pth"
    local.write_bytes(storage.read_bytes(spec))
    return str(local)
