"""The stages of batch segmentation, as Ray Data batch functions and actor classes.

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

import io
import json
import posixpath
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deeplab_core.checkpoint import load_model
from deeplab_core.crf import CRFParams
from deeplab_core.data.codec import DecodeError, encode_jpeg, encode_png
from deeplab_core.data.labels import cityscapes_to_label_ids, label_set_of
from deeplab_core.data.photos import decode_photo
from deeplab_core.inference import (Masks, Tiling, coarse_scores, crf_scale, halving_on_oom, image_masks,
                                    inference_size, label_maps_on_device, ran_out_of_memory, resize_images,
                                    tiled_coarse_scores)
from deeplab_core.monitoring import image_confidence
from pipelines import storage

MANIFEST_DIR = "_manifest"
SUMMARY_DIR = "summary"
EMPTY_IMAGE = np.zeros((0, 0, 3), np.uint8)
EMPTY_SCORES = np.zeros((0, 0, 0), np.float32)
EMPTY_MASK = np.zeros((0, 0), np.uint8)


# The store did not answer for this row: not a verdict on the image. The driver stops the run at the
# first such row and never commits it, so the rerun does the image. (A status, not an exception:
# Ray Data does not carry a task's exception type back to the driver.)
UNAVAILABLE = "unavailable"


def mask_path(relative: str) -> str:
    """masks/<relative path without its extension>.png"""
    return posixpath.join("masks", posixpath.splitext(relative)[0] + ".png")


def confidence_path(relative: str) -> str:
    """confidence/<relative path without its extension>.png: 8-bit, 255 × each pixel's top probability."""
    return posixpath.join("confidence", posixpath.splitext(relative)[0] + ".png")


def _ms(start: float) -> float:
    return 1000.0 * (time.perf_counter() - start)


def read_and_decode(batch: dict, max_pixels: int, orient: bool = True) -> dict:
    """Ray Data task: read each source's bytes and decode them to H×W×3 uint8 as a viewer shows them
    (`deeplab_core.data.photos`; `orient=False`: in sensor order). Records the EXIF orientation found
    (0: not decoded) and the frame count."""
    n = len(batch["source"])
    images, status, errors, decode_ms = [EMPTY_IMAGE] * n, ["ok"] * n, [""] * n, [0.0] * n
    orientation, frames = [0] * n, [0] * n
    for i, source in enumerate(batch["source"]):
        start = time.perf_counter()
        try:
            photo = decode_photo(storage.read_bytes(source), max_pixels, orient)
            images[i], orientation[i], frames[i] = photo.pixels, photo.orientation, photo.frames
        except storage.StorageUnavailable as e:
            status[i], errors[i] = UNAVAILABLE, str(e)
        except (DecodeError, storage.StorageError) as e:
            status[i], errors[i] = "error", str(e)
        decode_ms[i] = _ms(start)
    return {**batch, "image": images, "status": status, "error": errors, "decode_ms": decode_ms,
            "orientation": orientation, "frames": frames}


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
            model_ms, start = _ms(start) / len(rows), time.perf_counter()
            out = (label_maps_on_device(images, scores, self.crf, self.crf_max_pixels, crf_tile=tile) if self.masks
                   else scores.cpu().numpy())
        except (RuntimeError, ValueError) as e:
            if ran_out_of_memory(e):
                raise
            return f"model: {str(e).splitlines()[0][:300]}"
        return out, model_ms, _ms(start) / len(rows), max(size) / max(images.shape[1:3]), tile or 0

    def __call__(self, batch: dict) -> dict:
        n = len(batch["source"])
        coarse, model_ms, crf_ms = [EMPTY_SCORES] * n, [0.0] * n, [0.0] * n
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
                    else:
                        coarse[i] = out[k]
        common = {"model_ms": model_ms, "status": status, "error": errors, "scale": scale, "tile": tiles}
        if self.masks:
            kept = {k: v for k, v in batch.items() if self.keep_image or k != "image"}
            return {**kept, **common, "mask": masks, "confidence": confidence, "entropy": entropy, "crf_ms": crf_ms}
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

    def _masks(self, image: np.ndarray, coarse: np.ndarray, tile: int | None) -> tuple[Masks | None, str]:
        """The image's `Masks` and "", or None and the error line. A whole frame out of memory: once
        more tile by tile."""
        for attempt in (tile,) if tile else (None, CRF_TILE_AFTER_OUT_OF_MEMORY):
            try:
                return image_masks(image, coarse, self.crf, self.crf_backend, self.crf_max_pixels, attempt), ""
            except (RuntimeError, ValueError, MemoryError) as e:
                if not ran_out_of_memory(e):
                    return None, f"crf: {str(e).splitlines()[0][:300]}"
        return None, f"crf: out of memory at {image.shape[0]}×{image.shape[1]}"

    def __call__(self, batch: dict) -> dict:
        n = len(batch["source"])
        maps = {key: [EMPTY_MASK] * n for key in ("mask", "confidence", "entropy")}
        crf_ms, status, errors = [0.0] * n, list(batch["status"]), list(batch["error"])
        for i in range(n):
            if status[i] != "ok":
                continue
            start = time.perf_counter()
            masks, error = self._masks(batch["image"][i], batch["coarse"][i], int(batch["tile"][i]) or None)
            if error:
                status[i], errors[i] = "error", error
            else:
                maps["mask"][i], maps["confidence"][i], maps["entropy"][i] = masks.labels, masks.confidence, masks.entropy
            crf_ms[i] = _ms(start)
        out = {k: v for k, v in batch.items() if k != "coarse" and (self.keep_image or k != "image")}
        return {**out, **maps, "crf_ms": crf_ms, "status": status, "error": errors}


def write_outputs(batch: dict, output: str, spec: dict, label_ids: bool, overlays: bool,
                  model_uri: str, crf: dict | None, crf_backend: str = "", crf_max_pixels: int | None = None,
                  confidence_maps: bool = False, low_confidence: float = 0.5) -> dict:
    """Ray Data task: write each mask (and overlay, and confidence map) atomically; return the summary
    rows, with each image's confidence statistics (`deeplab_core.monitoring.image_confidence`)."""
    labels = label_set_of(spec)
    palette = labels.flat_palette()
    n = len(batch["source"])
    status, errors = list(batch["status"]), list(batch["error"])
    rows = {k: [] for k in ("mask_uri", "height", "width", "crf_scale", "class_pixels", "mean_confidence",
                            "low_confidence_fraction", "mean_entropy", "confidence_histogram", "write_ms")}
    for i in range(n):
        start = time.perf_counter()
        mask, uri = batch["mask"][i], ""
        if status[i] == "ok":
            uri = storage.join(output, mask_path(batch["relative"][i]))
            try:
                png = (encode_png(cityscapes_to_label_ids(mask)) if label_ids else encode_png(mask, palette))
                storage.write_bytes(uri, png)
                if overlays:
                    blended = labels.blend(batch["image"][i], mask)
                    relative = posixpath.splitext(batch["relative"][i])[0] + ".jpg"
                    storage.write_bytes(storage.join(output, "overlays", relative), encode_jpeg(blended))
                if confidence_maps:
                    storage.write_bytes(storage.join(output, confidence_path(batch["relative"][i])),
                                        encode_png(batch["confidence"][i]))
            except storage.StorageUnavailable as e:
                status[i], errors[i], uri = UNAVAILABLE, str(e), ""
        rows["mask_uri"].append(uri)
        rows["height"].append(int(mask.shape[0]) if mask.ndim == 2 else 0)
        rows["width"].append(int(mask.shape[1]) if mask.ndim == 2 else 0)
        rows["crf_scale"].append(crf_scale(mask.shape, crf_max_pixels, int(batch["tile"][i]) or None)
                                 if crf and mask.ndim == 2 and mask.size else 0.0)
        rows["class_pixels"].append(np.bincount(mask.ravel(), minlength=labels.num_classes).astype(np.int64)
                                    if uri else np.zeros(labels.num_classes, np.int64))
        stats = image_confidence(batch["confidence"][i] if uri else EMPTY_MASK, batch["entropy"][i], low_confidence)
        for key, value in stats.items():
            rows[key].append(value)
        rows["write_ms"].append(_ms(start))
    keep = ("source", "relative", "version", "orientation", "frames", "scale", "tile", "decode_ms", "model_ms",
            "crf_ms")
    return {**{k: batch[k] for k in keep}, **rows, "status": status, "error": errors,
            "model_uri": [model_uri] * n, "crf_params": [json.dumps(crf, sort_keys=True) if crf else ""] * n,
            "crf_backend": [crf_backend if crf else ""] * n}


# --- the output's record of processed inputs --------------------------------------------------------

def _read_parts(uri: str) -> list[tuple[str, pa.Table]]:
    parts = []
    for path in storage.list_files(uri, (".parquet",)):
        fs, p = storage.resolve(path)
        parts.append((posixpath.basename(p), pq.read_table(p, filesystem=fs)))
    return parts


def processed_versions(output: str) -> dict[str, str]:
    """source -> the version (size:mtime) a committed run processed, from `_manifest/`. First removes
    summary parts whose manifest part was never written (a run that died between the two writes),
    so a rerun never duplicates summary rows."""
    manifest = _read_parts(storage.join(output, MANIFEST_DIR))
    committed = {name for name, _ in manifest}
    for path in storage.list_files(storage.join(output, SUMMARY_DIR), (".parquet",)):
        if posixpath.basename(path) not in committed:
            storage.delete(path)
    done: dict[str, str] = {}
    for _, table in sorted(manifest, key=lambda p: p[0]):  # part names sort by time: newest wins
        done.update(zip(table.column("source").to_pylist(), table.column("version").to_pylist()))
    return done


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def commit(output: str, rows: list[dict]) -> None:
    """Append one part to `summary/`, then the same inputs to `_manifest/` (the commit point)."""
    name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet"
    summary = pa.Table.from_pylist(rows)
    storage.write_bytes(storage.join(output, SUMMARY_DIR, name), _parquet_bytes(summary))
    storage.write_bytes(storage.join(output, MANIFEST_DIR, name),
                        _parquet_bytes(summary.select(["source", "version", "status", "mask_uri"])))
