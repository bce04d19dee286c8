"""The model stages of batch segmentation, as Ray Data actor classes (reading, decoding and writing:
`pipelines.segment_io`).

    CPU-only cluster:
    list -> read + decode (CPU tasks) -> ModelStage (actor pool)
         -> LabelStage (CPU actor pool: upsample + dense CRF + argmax) -> write_outputs (CPU tasks)
    cluster with GPUs (CRF backend torch, or no CRF):
    list -> read + decode -> ModelStage (GPU actors: forward, upsample, torch dense CRF batched,
         argmax) -> write_outputs

On GPUs the pydensecrf CRF (~1 s per VOC image on one core) would leave the GPU idle, so there the
CRF runs right after the forward pass, on the same device, and no CPU CRF pool is started.

What crosses from the model stage to the CRF stage is the network's coarse output (logits on its
1/8 or 1/16 grid, `deeplab_core.inference.predict_coarse`), not full-size probabilities: for a
500×375 VOC image that is 21×47×63 float32 = 0.25 MB instead of 15.8 MB (bench/segment.py prints
the measured traffic). The CRF stage upsamples exactly as the model's own forward would.

A row that fails at any stage keeps `status="error"` and its reason and flows on untouched, so one
bad file never stops the batch.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from deeplab_core.checkpoint import load_model
from deeplab_core.crf import CRFParams
from deeplab_core.inference import (Masks, Tiling, coarse_scores, crf_scale, halving_on_oom, image_masks,
                                    inference_size, label_maps_on_device, ran_out_of_memory, resize_images,
                                    tiled_coarse_scores)
from pipelines.segment_io import EMPTY_MASK, elapsed_ms

EMPTY_SCORES = np.zeros((0, 0, 0), np.float32)


def refined_scale(crf: CRFParams | None, size: tuple[int, int], crf_max_pixels: int | None,
                  tile: int | None) -> float:
    """The scale the CRF ran at on a frame of `size` (the summary's `crf_scale`); 0 without the CRF."""
    return crf_scale(size, crf_max_pixels, tile) if crf is not None else 0.0


class ModelStage:
    """Actor: the network on a GPU when the actor has one, else on CPU with `threads` threads.
    Images of the same size in a batch go through one forward pass; a frame larger than `tiling`
    allows goes through in windows, `window_batch` at a time. With `masks`, the masks are made here,
    right after the forward pass and on the same device (upsample, the torch dense CRF batched over the
    group, argmax): the GPU path, and any path without the CRF, where no CPU CRF pool is needed.

    Out of memory (GPU, or CPU `MemoryError`): the group is split in halves down to one image, an image
    that alone does not fit is retried in tiles (`Tiling.after_out_of_memory`), and only a tile that
    does not fit makes an error row. The next batch runs at full size again."""

    def __init__(self, model_dir: str, scales=(1.0,), flip: bool = False, amp: bool = True, threads: int = 1,
                 masks: bool = False, crf: dict | None = None, keep_image: bool = True, scale: str | int = "native",
                 crf_max_pixels: int | None = None, tiling: dict | None = None, window_batch: int = 4):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.model, spec = load_model(model_dir, map_location=self.device)
        self.model.to(self.device)
        self.scale, self.trained_long_side = scale, spec.get("trained_long_side")
        self.crf_max_pixels = crf_max_pixels
        self.scales, self.flip, self.amp = tuple(scales), flip, amp and self.device.type == "cuda"
        self.masks, self.keep_image = masks, keep_image
        self.crf = CRFParams(**crf) if crf is not None else None
        self.tiling, self.window_batch = Tiling(**(tiling or {})), window_batch

    def _size(self, image: np.ndarray) -> tuple[int, int]:
        return inference_size(*image.shape[:2], self.scale, self.trained_long_side)

    def _tiled_scores(self, image: np.ndarray, size: tuple[int, int], tiling: Tiling, window_batch: int):
        if tuple(size) != image.shape[:2]:
            image = resize_images(torch.from_numpy(image).permute(2, 0, 1)[None], size)[0].permute(1, 2, 0).numpy()
        return tiled_coarse_scores(self.model, image, self.device, tiling.tile, tiling.overlap, window_batch,
                                   scales=self.scales, flip=self.flip, amp=self.amp)

    def _forward(self, batch: dict, rows: list[int], tiling: Tiling, window_batch: int):
        """The rows (images of one size) through the network, whole or in tiles, and the masks when
        made here: (out, model ms and CRF ms per image, scale, tile or 0), or the error line of a bad
        input. Out of memory propagates: the caller retries smaller groups, then tiles."""
        images = np.stack([batch["image"][i] for i in rows])
        size = self._size(images[0])
        tile = tiling.tile_for(size)
        start = time.perf_counter()
        try:
            if tile:
                scores = torch.stack([self._tiled_scores(image, size, tiling, window_batch) for image in images])
            else:
                scores = coarse_scores(self.model, images, self.device, self.scales, self.flip, self.amp, size)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            model_ms, start = elapsed_ms(start) / len(rows), time.perf_counter()
            out = (label_maps_on_device(images, scores, self.crf, self.crf_max_pixels, crf_tile=tile) if self.masks
                   else scores.cpu().numpy())
        except (RuntimeError, ValueError) as e:
            if ran_out_of_memory(e):
                raise
            return f"model: {str(e).splitlines()[0][:300]}"
        return out, model_ms, elapsed_ms(start) / len(rows), max(size) / max(images.shape[1:3]), tile or 0

    def __call__(self, batch: dict) -> dict:
        n = len(batch["source"])
        coarse, model_ms, crf_ms, crf_scales = [EMPTY_SCORES] * n, [0.0] * n, [0.0] * n, [0.0] * n
        masks, confidence, entropy = [EMPTY_MASK] * n, [EMPTY_MASK] * n, [EMPTY_MASK] * n
        status, errors, scale, tiles = list(batch["status"]), list(batch["error"]), [0.0] * n, [0] * n
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            if status[i] == "ok":
                groups.setdefault(batch["image"][i].shape, []).append(i)
        for group in groups.values():
            for rows, result in halving_on_oom(lambda rows: self._forward(batch, rows, self.tiling, self.window_batch),
                                               group):
                if result is None:  # one image that does not fit whole: in tiles, one at a time
                    size = self._size(batch["image"][rows[0]])
                    tiling = self.tiling.after_out_of_memory(size)
                    result = next(halving_on_oom(lambda rows: self._forward(batch, rows, tiling, 1), rows))[1]
                if result is None:
                    status[rows[0]] = "error"
                    errors[rows[0]] = (f"model: out of {'GPU ' if self.device.type == 'cuda' else ''}memory at "
                                       f"{min(tiling.tile, size[0])}×{min(tiling.tile, size[1])}")
                    continue
                if isinstance(result, str):
                    for i in rows:
                        status[i], errors[i] = "error", result
                    continue
                out, model_ms_each, crf_ms_each, image_scale, tile = result
                for k, i in enumerate(rows):
                    model_ms[i], scale[i], tiles[i] = model_ms_each, image_scale, tile
                    if self.masks:
                        masks[i], confidence[i], entropy[i] = out.labels[k], out.confidence[k], out.entropy[k]
                        crf_ms[i] = crf_ms_each
                        crf_scales[i] = refined_scale(self.crf, masks[i].shape, self.crf_max_pixels, tile or None)
                    else:
                        coarse[i] = out[k]
        common = {"model_ms": model_ms, "status": status, "error": errors, "scale": scale, "tile": tiles}
        if self.masks:
            kept = {k: v for k, v in batch.items() if self.keep_image or k != "image"}
            return {**kept, **common, "mask": masks, "confidence": confidence, "entropy": entropy, "crf_ms": crf_ms,
                    "crf_scale": crf_scales}
        return {**batch, **common, "coarse": coarse}


# The CRF tile for a whole frame that ran out of memory in the CPU CRF stage.
CRF_TILE_AFTER_OUT_OF_MEMORY = 1024


class LabelStage:
    """Actor (CPU): coarse scores -> mask and confidence, through the dense CRF (`crf_backend`) unless
    `crf` is None;
    tiled frames (row `tile` > 0) are refined tile by tile, and a frame out of memory is retried so."""

    def __init__(self, crf: dict | None, keep_image: bool, crf_backend: str = "pydensecrf",
                 crf_max_pixels: int | None = None):
        torch.set_num_threads(1)
        self.crf = CRFParams(**crf) if crf is not None else None
        self.keep_image, self.crf_backend, self.crf_max_pixels = keep_image, crf_backend, crf_max_pixels

    def _masks(self, image: np.ndarray, coarse: np.ndarray, tile: int | None) -> tuple[Masks | None, str, float]:
        """The image's `Masks`, "" and the scale the CRF ran at, or None, the error line and 0. A whole
        frame out of memory: once more tile by tile."""
        for attempt in (tile,) if tile else (None, CRF_TILE_AFTER_OUT_OF_MEMORY):
            try:
                masks = image_masks(image, coarse, self.crf, self.crf_backend, self.crf_max_pixels, attempt)
            except (RuntimeError, ValueError, MemoryError) as e:
                if not ran_out_of_memory(e):
                    return None, f"crf: {str(e).splitlines()[0][:300]}", 0.0
                continue
            scale = refined_scale(self.crf, image.shape[:2], self.crf_max_pixels, attempt)
            return masks, "", scale
        return None, f"crf: out of memory at {image.shape[0]}×{image.shape[1]}", 0.0

    def __call__(self, batch: dict) -> dict:
        n = len(batch["source"])
        maps = {key: [EMPTY_MASK] * n for key in ("mask", "confidence", "entropy")}
        crf_ms, crf_scales, status, errors = [0.0] * n, [0.0] * n, list(batch["status"]), list(batch["error"])
        for i in range(n):
            if status[i] != "ok":
                continue
            start = time.perf_counter()
            masks, error, crf_scales[i] = self._masks(batch["image"][i], batch["coarse"][i],
                                                      int(batch["tile"][i]) or None)
            if error:
                status[i], errors[i] = "error", error
            else:
                maps["mask"][i], maps["confidence"][i], maps["entropy"][i] = masks.labels, masks.confidence, masks.entropy
            crf_ms[i] = elapsed_ms(start)
        out = {k: v for k, v in batch.items() if k != "coarse" and (self.keep_image or k != "image")}
        return {**out, **maps, "crf_ms": crf_ms, "crf_scale": crf_scales, "status": status, "error": errors}
