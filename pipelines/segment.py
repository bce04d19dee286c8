"""Batch segmentation of an image folder or bucket with a trained DeepLab model, on Ray Data.

    python pipelines/segment.py --model models:/deeplab-voc/3 --input s3://bucket/images/2026-11-24 \\
        --output s3://bucket/masks/2026-11-24

Walks --input recursively (JPEG, PNG, HEIC/HEIF, AVIF, WebP, TIFF, BMP, GIF), decodes each image as a
viewer shows it (EXIF orientation applied, 16-bit and CMYK mapped, transparency over white: see
deeplab_core/data/photos.py), runs the network at the model's training scale (--scale), frames too
large for one pass in overlapping tiles (--tile), and for every new or changed image writes
--output/masks/<path>.png (palette PNG of train ids), optionally overlays/<path>.jpg and
confidence/<path>.png, and a summary/part-*.parquet row (source, EXIF orientation, mask URI, size,
per-class pixel counts, confidence statistics, model, CRF params, per-stage ms, status, error).
Inputs already processed (same size and modification time, recorded in --output/_manifest/) are
skipped; --force redoes everything. Unreadable files get an error row; the rest goes on. One run per
output at a time: a second one refuses (the lease in _manifest/, pipelines/lease.py).

Stages: read + decode (CPU tasks) -> model (actor pool, one GPU per actor when the cluster has GPUs)
-> dense CRF -> write (CPU tasks). With GPUs the CRF (--crf-backend auto: the torch one) runs in the
model actors right after the forward pass; on CPU-only clusters a CPU actor pool runs it
(pydensecrf when installed, else the torch one); with --no-crf the model actors make the masks.
Each run is an MLflow run in experiment "batch-segmentation", with the night's distributions for
`python -m pipelines.monitor`. Exit 0 unless the model cannot be loaded or no input could be
processed; 2 for an unreachable store or an output another run holds. The last stdout line is a
JSON summary: images, errors, skipped, output.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import posixpath
import tempfile
import time
import warnings

import numpy as np
from PIL import Image

from deeplab_core.checkpoint import load_model
from deeplab_core.crf import BACKENDS, CRF_PRESETS, PYDENSECRF_MISSING, CRFParams, pydensecrf_installed
from deeplab_core.data.codec import MAX_PIXELS
from deeplab_core.data.labels import label_set_of
from deeplab_core.data.photos import decode_photo
from deeplab_core.inference import SCALE_TOLERANCE, SCALES, Tiling
from deeplab_core.monitoring import Distributions, NightStatistics, image_confidence
from pipelines import storage, tracking
from pipelines.cli import Progress, emit_summary, fit_actors, init_ray, log, run
from pipelines.lease import OutputLease
from pipelines.model_uri import download_model
from pipelines.segment_io import (EMPTY_MASK, UNAVAILABLE, commit, confidence_path, mask_path, processed_versions,
                                  read_and_decode, write_outputs)
from pipelines.segmentation import LabelStage, ModelStage

EXPERIMENT = "batch-segmentation"
CRF_MAX_PIXELS = 500_000  # a 12 Mpx photo is refined at ~2.7× the cost of a 500×375 VOC image
EXTENSIONS = ".jpg,.jpeg,.png,.bmp,.gif,.tif,.tiff,.webp,.heic,.heif,.avif"


def crf_params(args, parser) -> dict | None:
    """--no-crf, else a preset, overridden by an MLflow run's crf.* params, then by --crf KEY=VALUE."""
    if args.no_crf:
        return None
    values = CRF_PRESETS[args.crf_preset].to_dict()
    if args.crf_params:
        from mlflow.tracking import MlflowClient

        run_id = args.crf_params.removeprefix("runs:/").strip("/")
        try:
            params = MlflowClient().get_run(run_id).data.params
        except Exception as e:
            raise ValueError(f"--crf-params {args.crf_params}: cannot read the run: {str(e).splitlines()[0][:200]}") from None
        found = {k[len("crf."):]: v for k, v in params.items() if k.startswith("crf.")}
        if not found:
            raise ValueError(f"--crf-params {args.crf_params}: the run has no crf.* params")
        values.update(found)
    for item in args.crf:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--crf {item}: expected KEY=VALUE")
        values[key] = value
    try:
        return CRFParams.from_strings(values).to_dict()  # validates
    except ValueError as e:
        parser.error(f"--crf: {e}")


def crf_backend(requested: str, cluster_has_gpus: bool) -> str:
    """`--crf-backend auto`: the torch CRF on the GPUs when there are GPUs; on CPUs pydensecrf when it
    is installed (the `pydensecrf` extra), else the torch CRF (the same answer, 1.0-1.35x pydensecrf's
    CPU time). `pydensecrf` without it installed: refused in one line saying how to install it."""
    if requested == "pydensecrf" and not pydensecrf_installed():
        raise ValueError(f"--crf-backend pydensecrf: {PYDENSECRF_MISSING}")
    if requested != "auto":
        return requested
    return "torch" if cluster_has_gpus or not pydensecrf_installed() else "pydensecrf"


def add_crf_backend_argument(parser) -> None:
    parser.add_argument("--crf-backend", choices=("auto", *BACKENDS), default="auto",
                        help="auto (default): torch on the GPUs when the cluster has GPUs; on CPU-only clusters "
                             "pydensecrf when installed (the pydensecrf extra), else torch; pydensecrf: Krähenbühl's "
                             "C++ on one CPU core per image; torch: the same inference in PyTorch ops "
                             "(deeplab_core.crf.torch_backend), on the GPU when there is one")


def add_crf_arguments(parser: argparse.ArgumentParser) -> None:
    crf = parser.add_argument_group("CRF (defaults: the released DeepLab ResNet-101 VOC setting)")
    crf.add_argument("--no-crf", action="store_true", help="skip the dense CRF")
    add_crf_backend_argument(crf)
    crf.add_argument("--crf-preset", choices=sorted(CRF_PRESETS), default="resnet101_voc")
    crf.add_argument("--crf-params", metavar="runs:/RUN_ID",
                     help="take the crf.* params of this MLflow run (e.g. the best of a CRF search)")
    crf.add_argument("--crf", action="append", default=[], metavar="KEY=VALUE",
                     help="override one CRF parameter, e.g. --crf bi_w=5 or --crf normalization=after "
                          "(repeatable)")


def list_inputs(input_uri: str, extensions: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
    """Every image below the input, with a version (size:mtime) for incremental runs; inputs whose
    mask path would collide with an earlier one's (a.jpg and a.png) or leave the output (a key with
    `..`) are returned as errors."""
    if not storage.exists(input_uri):
        raise storage.StorageError(f"{input_uri}: input not found")
    root = storage.resolve(input_uri)[1]
    items, refused, seen = [], [], {}
    for info in storage.list_file_infos(input_uri, extensions):
        relative = posixpath.relpath(storage.resolve(info.path)[1], root).replace(os.sep, "/")
        item = {"source": info.path, "relative": relative, "version": f"{info.size}:{info.mtime_ns}"}
        mask = mask_path(relative)
        if relative.startswith("../") or posixpath.isabs(relative):
            # An S3 key may hold `..`: its mask would land outside --output.
            refused.append({**item, "error": f"key {relative!r} points outside the input prefix; not written"})
        elif mask in seen:
            refused.append({**item, "error": f"mask {mask} already comes from {seen[mask]}"})
        else:
            seen[mask] = relative
            items.append(item)
    return items, refused


def error_row(item: dict, error: str, model_uri: str, crf: dict | None, num_classes: int, backend: str) -> dict:
    """The summary row of an input refused before the graph, with every column a processed row has
    (a summary part's schema comes from its first row)."""
    return {**item, "orientation": 0, "frames": 0, "scale": 0.0, "tile": 0, "decode_ms": 0.0, "model_ms": 0.0,
            "crf_ms": 0.0, "mask_uri": "", "height": 0, "width": 0, "crf_scale": 0.0, "class_pixels": [0] * num_classes,
            **image_confidence(EMPTY_MASK, EMPTY_MASK), "write_ms": 0.0, "status": "error", "error": error,
            "model_uri": model_uri, "crf_params": json.dumps(crf, sort_keys=True) if crf else "",
            "crf_backend": backend if crf else ""}


def segment(args, crf: dict | None) -> dict:
    """Check the output, the model and the input, then run holding the output's lease
    (`pipelines.lease`): a second run on the same output refuses, and a refused run writes nothing."""
    start = time.perf_counter()
    output = storage.absolute(args.output)
    storage.check_writable(output)
    model_dir = download_model(args.model)
    _, spec = load_model(model_dir)  # fail here, once, with a clear message, not in every actor
    if args.cityscapes_label_ids and spec.get("dataset") != "cityscapes":
        raise ValueError(f"--cityscapes-label-ids: model {args.model} predicts {spec.get('dataset')}, not cityscapes")
    extensions = tuple(e if e.startswith(".") else "." + e for e in args.extensions.lower().split(","))
    items, refused = list_inputs(storage.absolute(args.input), extensions)
    run_name = f"segment-{time.strftime('%Y%m%d-%H%M%S')}"
    with OutputLease(output, run_name) as lease:
        if lease.took_over:
            log(f"segment: the output's lease of run {lease.took_over.get('run')} had expired: taken over")
        return segment_inputs(args, crf, output, run_name, model_dir, spec, items, refused, start)


def segment_inputs(args, crf: dict | None, output: str, run_name: str, model_dir: str, spec: dict,
                   items: list[dict], refused: list[dict], start: float) -> dict:
    """The new and changed inputs through the graph, committed as they come back; the MLflow run."""
    if args.force:  # the record afresh; the lease beside it stays
        for part in ("_manifest", "summary"):
            for path in storage.list_files(storage.join(output, part), (".parquet",)):
                storage.delete(path)
    done = processed_versions(output)
    todo = [i for i in items if done.get(i["source"]) != i["version"]]
    refused = [c for c in refused if done.get(c["source"]) != c["version"]]
    skipped = len(items) - len(todo)
    log(f"segment: {len(items)} images under {args.input}, {skipped} already processed, {len(todo)} to do")

    night = NightStatistics(list(label_set_of(spec).classes), args.review)
    gpus = False
    if todo:
        import ray

        init_ray(min_cpus=args.model_actors * args.model_cpus + args.crf_actors + 1)
        gpus = ray.cluster_resources().get("GPU", 0) > 0
    backend = crf_backend(args.crf_backend, gpus)
    rows = [error_row({k: v for k, v in c.items() if k != "error"}, c["error"], args.model, crf,
                      spec["num_classes"], backend) for c in refused]
    for row in rows:
        night.add(row)
    stage_ms = {k: 0.0 for k in ("decode_ms", "model_ms", "crf_ms", "write_ms")}
    counts = {"ok": 0, "error": len(rows)}
    if todo:
        for row in run_graph(args, todo, model_dir, spec, crf, output, backend, gpus):
            if row["status"] == UNAVAILABLE:
                raise storage.StorageUnavailable(row["error"])
            rows.append(row)
            night.add(row)
            counts[row["status"]] += 1
            for k in stage_ms:
                stage_ms[k] += row[k]
            if row["status"] == "error":
                log(f"segment: {row['source']}: {row['error']}")
            if len(rows) >= args.commit_every:
                commit(output, rows)
                rows = []
    if rows:
        commit(output, rows)
    elapsed = time.perf_counter() - start
    done_images = counts["ok"] + counts["error"]
    summary = {"images": counts["ok"], "errors": counts["error"], "skipped": skipped, "output": args.output,
               "seconds": round(elapsed, 2), "images_per_s": round(counts["ok"] / elapsed, 3),
               **{k: round(v / max(1, done_images), 1) for k, v in stage_ms.items()}}
    settings = {"model_uri": args.model, "crf": json.dumps(crf, sort_keys=True) if crf else "none",
                "scale": str(args.scale)}
    log_run(args, run_name, crf, backend, summary, night, night.distributions(summary["images_per_s"], settings))
    return summary


def run_graph(args, todo: list[dict], model_dir: str, spec: dict, crf: dict | None, output: str, backend: str,
              gpus: bool):
    """The Ray Data graph; yields one summary row per input as results stream back. Without the CRF,
    or with GPUs and the torch CRF, the model actors make the masks; otherwise a CPU actor pool does
    (an argmax alone is not worth another actor and the image's trip to it)."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False  # our Progress lines say it once
    masks_in_model = crf is None or (gpus and backend == "torch")
    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 200)))
    ds = ds.map_batches(read_and_decode, fn_kwargs={"max_pixels": args.max_pixels,
                                                 "orient": not args.keep_sensor_orientation},
                        batch_size=4, num_cpus=0.5)
    ds = ds.map_batches(ModelStage, fn_constructor_kwargs={
        "model_dir": model_dir, "scales": tuple(args.tta_scales), "flip": args.tta_flip, "amp": not args.no_amp,
        "threads": args.model_cpus, "masks": masks_in_model, "crf": crf if masks_in_model else None,
        "keep_image": args.overlays or not masks_in_model, "scale": args.scale, "crf_max_pixels": args.crf_max_pixels,
        "tiling": tiling(args), "window_batch": args.batch_size},
        batch_size=args.batch_size, compute=ray.data.ActorPoolStrategy(size=args.model_actors),
        num_gpus=1 if gpus else 0, num_cpus=1 if gpus else args.model_cpus)
    if not masks_in_model:
        crf_actors = fit_actors(args.crf_actors, (0 if gpus else args.model_actors * args.model_cpus) + 1,
                                "segment: CRF", batches=-(-len(todo) // args.batch_size))
        ds = ds.map_batches(LabelStage, fn_constructor_kwargs={"crf": crf, "keep_image": args.overlays,
                                                               "crf_backend": backend,
                                                               "crf_max_pixels": args.crf_max_pixels},
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=crf_actors), num_cpus=1)
    where = ("in the model actors" + (" on the GPU" if gpus else "")) if masks_in_model else "in a CPU actor pool"
    log(f"segment: CRF {backend if crf else 'off'}, masks {where}")
    ds = ds.map_batches(write_outputs, fn_kwargs={
        "output": output, "spec": spec, "label_ids": args.cityscapes_label_ids, "overlays": args.overlays,
        "model_uri": args.model, "crf": crf, "crf_backend": backend,
        "confidence_maps": args.confidence, "low_confidence": args.low_confidence},
        batch_size=8, num_cpus=0.5)
    progress = Progress("segment", len(todo), "images")
    for done, row in enumerate(ds.iter_rows(), 1):
        progress.update(done)
        yield {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in row.items()}


def log_run(args, run_name: str, crf: dict | None, backend: str, summary: dict, night: NightStatistics,
            distributions: Distributions) -> None:
    """One MLflow run per batch job, tagged with its job (`--job`) for `pipelines.monitor`: params,
    the summary, the run's distributions (class shares, confidence histogram as `confidence_histogram`
    by step = bin, error rate) as metrics and as distributions.json, a plot of them, and a review sheet
    of the least confident images. An unreachable tracking server costs a warning, not the job."""
    import mlflow

    try:
        experiment_id = tracking.setup(EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                              tags={tracking.KIND_TAG: "segment", tracking.JOB_TAG: args.job or args.model}):
            mlflow.log_params({"model_uri": args.model, "input": args.input, "output": args.output,
                               "tta_scales": ",".join(map(str, args.tta_scales)), "tta_flip": args.tta_flip,
                               "scale": args.scale, "crf_max_pixels": args.crf_max_pixels, **{
                                   f"tiling.{k}": v for k, v in tiling(args).items()},
                               "orientation": "sensor" if args.keep_sensor_orientation else "exif",
                               "confidence_maps": args.confidence, "low_confidence": args.low_confidence,
                               **({f"crf.{k}": v for k, v in crf.items()} | {"crf_backend": backend}
                                  if crf else {"crf": "none"})})
            d = distributions
            mlflow.log_metrics({**{k: float(v) for k, v in summary.items() if k != "output"},
                                "error_rate": d.error_rate, "pixels": float(d.pixels),
                                "mean_confidence": d.mean_confidence, "low_confidence_fraction": d.low_confidence_fraction,
                                "mean_entropy": d.mean_entropy,
                                **{f"class_share.{metric_name(n)}": v for n, v in d.class_share.items()},
                                **{f"class_images.{metric_name(n)}": v for n, v in d.class_images.items()}})
            for step, share in enumerate(d.confidence_histogram):
                mlflow.log_metric("confidence_histogram", share, step=step)
            from pipelines.reports import distribution_plot, review_sheet

            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "distributions.json"), "w") as f:
                    json.dump(d.to_dict(), f, indent=1)
                distribution_plot(d, os.path.join(tmp, "distributions.png"))
                least = night.least_confident()
                if least:
                    review_sheet([review_item(row, args) for row in least], os.path.join(tmp, "least_confident.png"))
                mlflow.log_artifacts(tmp)
    except Exception as e:
        warnings.warn(f"MLflow: batch-segmentation run not logged: {type(e).__name__}: "
                      f"{str(e).splitlines()[0][:200]}", RuntimeWarning, stacklevel=2)


def metric_name(class_name: str) -> str:
    return class_name.replace(" ", "_")


def review_item(row: dict, args, side: int = 320) -> dict:
    """A least-confident image as the review sheet shows it: its overlay (re-read from the input and
    the written mask, shrunk to `side` pixels) and its confidence map when --confidence wrote one."""
    photo = decode_photo(storage.read_bytes(row["source"]), args.max_pixels, not args.keep_sensor_orientation)
    written = Image.open(io.BytesIO(storage.read_bytes(row["mask_uri"])))
    mask, palette = np.array(written), written.getpalette()  # palette indices are the class ids
    shrink = max(1, max(mask.shape) // side)
    image, mask = photo.pixels[::shrink, ::shrink], mask[::shrink, ::shrink]
    confidence = None
    if args.confidence:
        uri = storage.join(storage.absolute(args.output), confidence_path(row["relative"]))
        confidence = np.array(Image.open(io.BytesIO(storage.read_bytes(uri))))[::shrink, ::shrink]
    colours = np.array(palette[:768], np.uint8).reshape(-1, 3) if palette else None
    overlay = image if colours is None else (0.5 * image + 0.5 * colours[mask]).astype(np.uint8)
    return {"title": f"{row['relative']}: confidence {row['mean_confidence']:.2f}", "overlay": overlay,
            "confidence": confidence}


def tiling(args) -> dict:
    """`Tiling`'s fields from --tile (given: every frame with a longer side is tiled), --tile-overlap,
    --tile-above."""
    return {"tile": args.tile or Tiling.tile, "overlap": args.tile_overlap,
            "above": None if args.tile else args.tile_above}


def scale_choice(text: str) -> str | int:
    if text in SCALES:
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, native or a long side in pixels (e.g. 1024)")
    return value


def parse_args(argv=None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    p = argparse.ArgumentParser(prog="segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint directory (path or s3://), runs:/<run id>[/path], "
                   "or models:/<name>/<version|latest> / models:/<name>@<alias>")
    p.add_argument("--input", required=True, help="folder or s3:// prefix of images, walked recursively")
    p.add_argument("--output", required=True, help="folder or s3:// prefix for masks/, overlays/, confidence/, summary/, _manifest/")
    p.add_argument("--extensions", default=EXTENSIONS, help=f"image file extensions (default {EXTENSIONS})")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help="refuse larger images, a guard against decompression bombs (default %(default)s: a 100 Mpx "
                        "photo or aerial tile passes; decoding one takes 300 MB)")
    p.add_argument("--keep-sensor-orientation", action="store_true",
                   help="segment the pixels in their stored order, ignoring the EXIF orientation (by default "
                        "images, masks and overlays are as a viewer shows them)")
    p.add_argument("--scale", default="auto", type=scale_choice, metavar="auto|native|N",
                   help="the size the network sees each image at: auto (default) shrinks an image whose long side "
                        f"exceeds the model's training scale (model.json trained_long_side) by over "
                        f"{SCALE_TOLERANCE:g}x to that scale; native never resizes; N: long side N. Masks always "
                        "have the image's size")
    p.add_argument("--crf-max-pixels", type=int, default=CRF_MAX_PIXELS,
                   help="the dense CRF runs on at most this many pixels: larger images are refined on a "
                        "downscaled copy whose marginals are upsampled (default %(default)s, ~2.7 VOC images)")
    tiles = p.add_argument_group("frames too large for one pass: overlapping windows, cross-faded scores")
    tiles.add_argument("--tile", type=int, metavar="SIZE",
                       help="tile every frame with a side longer than SIZE pixels at the network's scale (default: "
                            f"only frames over --tile-above, in {Tiling.tile}-pixel tiles)")
    tiles.add_argument("--tile-overlap", type=int, default=Tiling.overlap, metavar="PX",
                       help="pixels by which neighbouring windows overlap; their scores are cross-faded there "
                            "(default %(default)s)")
    tiles.add_argument("--tile-above", type=int, default=Tiling.above, metavar="PIXELS",
                       help="tile frames larger than this many pixels at the network's scale (default %(default)s, "
                            "2048×2048)")
    watch = p.add_argument_group("how the night went, without labels (pipelines.monitor compares nights)")
    watch.add_argument("--confidence", action="store_true",
                       help="also write confidence/<path>.png: 8-bit, 255 × each pixel's top class probability (after "
                            "the CRF its marginal). The summary rows carry confidence statistics either way")
    watch.add_argument("--low-confidence", type=float, default=0.5, metavar="P",
                       help="pixels whose top probability is under P count as low-confidence (default %(default)s)")
    watch.add_argument("--job", help="the nightly job this run belongs to, tagged on its MLflow run so that monitor "
                                     "compares it with its own earlier nights only (default: the --model URI)")
    watch.add_argument("--review", type=int, default=8, metavar="N",
                       help="the N least confident images go into the run's review sheet (default %(default)s)")
    p.add_argument("--force", action="store_true", help="redo every image, not only new or changed ones")
    p.add_argument("--overlays", action="store_true", help="also write colour overlays/<path>.jpg")
    p.add_argument("--cityscapes-label-ids", action="store_true",
                   help="write Cityscapes labelIds (for the official evaluation) instead of train ids")
    add_crf_arguments(p)
    ray_group = p.add_argument_group("Ray")
    ray_group.add_argument("--model-actors", type=int, default=1, help="model actors (one GPU each when present)")
    ray_group.add_argument("--model-cpus", type=int, default=1, help="CPUs (torch threads) per model actor on CPU")
    ray_group.add_argument("--crf-actors", type=int, default=os.cpu_count() or 1,
                           help="CRF actors, one CPU each (at most one per model batch to do)")
    ray_group.add_argument("--batch-size", type=int, default=4, help="images per model call (same-size images "
                           "share one forward pass)")
    ray_group.add_argument("--tta-scales", type=float, nargs="+", default=[1.0], help="test-time input scales")
    ray_group.add_argument("--tta-flip", action="store_true", help="average with horizontally flipped input")
    ray_group.add_argument("--no-amp", action="store_true", help="full precision on GPU")
    ray_group.add_argument("--commit-every", type=int, default=64,
                           help="record progress in _manifest/ every N images (a crash redoes at most N)")
    args = p.parse_args(argv)
    for name in ("model_actors", "model_cpus", "crf_actors", "batch_size", "commit_every", "max_pixels",
                 "crf_max_pixels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.low_confidence <= 1:
        p.error(f"--low-confidence must be in (0, 1], got {args.low_confidence}")
    if args.review < 0:
        p.error(f"--review must be >= 0, got {args.review}")
    try:
        Tiling(**tiling(args))
    except ValueError as e:
        p.error(f"--tile: {e}")
    if any(s <= 0 for s in args.tta_scales):
        p.error(f"--tta-scales must be positive, got {args.tta_scales}")
    return args, p


def main(argv=None) -> int:
    args, parser = parse_args(argv)
    summary = segment(args, crf_params(args, parser))
    log(f"segment: {summary['images']} images, {summary['errors']} errors, {summary['skipped']} skipped, "
        f"{summary['images_per_s']} images/s")
    emit_summary(summary)
    if summary["images"] == 0 and summary["errors"] > 0:
        log("segment: error: no input could be processed")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
