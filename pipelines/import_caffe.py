"""Import a released DeepLab-v2 Caffe model (`.caffemodel`) as this project's saved model, so that
`segment`, `evaluate` and `model.init_from` start from the paper's own weights. No Caffe needed.

    python -m pipelines.import_caffe --caffemodel train2_iter_20000.caffemodel \\
        --model deeplabv2_resnet101_aspp_l --num-classes 21 --out models/deeplabv2_voc12
    python -m pipelines.import_caffe --caffemodel init.caffemodel --model deeplabv2_resnet101_aspp_l \\
        --num-classes 21 --out models/deeplabv2_init --allow-missing     # ImageNet+COCO start point

The model is built in the Caffe style (`style: caffe`: the released geometry, frozen BN, BGR 0-255
input minus the mean pixel, which inference and training apply by themselves). Every layer with
weights must find its place and every model tensor must be filled, or the import fails listing
them; `--allow-missing` leaves the classifier fresh when the file's head has another class count.
The directory appears whole or not at all. The last stdout line is the JSON summary.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from deeplab_core.caffe_weights import caffe_state, check_pooling
from deeplab_core.caffemodel import CaffeModelError, parse_caffemodel
from deeplab_core.checkpoint import MODEL_FILE, SPEC_FILE, save_model
from deeplab_core.data.labels import LABEL_SETS, TYPICAL_LONG_SIDE, label_set
from deeplab_core.data.transforms import CAFFE
from deeplab_core.models import MODELS, build_model
from pipelines.cli import emit_summary, log, run

BACKBONES = ("resnet50", "resnet101", "vgg16")


def caffe_options(model_name: str) -> dict:
    """The options of the released models: Caffe style; ResNets with frozen BN at output stride 8."""
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; valid: {', '.join(sorted(MODELS))}")
    parts = model_name.split("_")
    if parts[0] != "deeplabv2" or parts[1] not in BACKBONES:
        valid = sorted(m for m in MODELS if m.startswith("deeplabv2_") and m.split("_")[1] in BACKBONES)
        raise ValueError(f"{model_name}: the released Caffe models are DeepLab-v2 ones; valid: {', '.join(valid)}")
    return {"style": "caffe"} if parts[1] == "vgg16" else {"style": "caffe", "bn": "frozen", "output_stride": 8}


def _listed(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" … ({len(names)} in all)" if len(names) > 8 else "")


def import_caffe(caffemodel: str, model_name: str, num_classes: int, out: str, dataset: str = "voc",
                 allow_missing: bool = False) -> dict:
    labels = label_set(dataset)
    if num_classes != labels.num_classes:
        raise ValueError(f"--num-classes {num_classes} but {dataset} has {labels.num_classes} classes")
    if os.path.exists(out):
        raise ValueError(f"{out}: already exists; choose another --out or remove it")
    options = caffe_options(model_name)
    model = build_model(model_name, num_classes, **options).eval()
    log(f"import_caffe: reading {caffemodel}")
    try:
        content = Path(caffemodel).read_bytes()  # read once: parsed and hashed
    except FileNotFoundError:
        raise FileNotFoundError(f"{caffemodel}: caffemodel not found") from None
    layers = parse_caffemodel(content, caffemodel)
    check_pooling(layers, model)
    placed = caffe_state(layers, model)
    if placed.unplaced:
        raise CaffeModelError(f"{caffemodel}: {len(placed.unplaced)} layer(s) with weights have no place in "
                              f"{model_name}: {_listed(placed.unplaced)}")
    outside_head = [k for k in placed.missing if not k.startswith("classifier.")]
    if outside_head or (placed.missing and not allow_missing):
        hint = "" if outside_head else " (--allow-missing leaves the classifier fresh)"
        raise CaffeModelError(f"{caffemodel}: {len(placed.missing)} tensor(s) of {model_name} not in the file: "
                              f"{_listed(placed.missing)}{hint}")
    model.load_state_dict(placed.state, strict=False)
    digest = hashlib.sha256(content).hexdigest()
    spec = {"name": model_name, "num_classes": num_classes, "options": options, "msc_scales": None,
            **labels.to_dict(), "input_normalization": dataclasses.asdict(CAFFE),
            "trained_long_side": TYPICAL_LONG_SIDE.get(dataset),
            "source": {"caffemodel": os.path.basename(caffemodel), "sha256": digest,
                       "classifier_fresh": sorted({k.rsplit(".", 1)[0] for k in placed.missing})}}
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".import-", dir=parent)
    try:
        save_model(staging, model, spec)
        os.replace(staging, out)  # the directory appears whole or not at all
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"import_caffe: {len(placed.state)} tensors from {sum(1 for layer in layers if layer.blobs)} layers "
        f"({placed.msc_copies} MSC copies skipped); saved to {out}")
    return {"out": out, "model": model_name, "num_classes": num_classes, "tensors": len(placed.state),
            "msc_copies_skipped": placed.msc_copies, "head_skipped": placed.head_skipped,
            "classifier_fresh": bool(placed.missing), "sha256": digest}


def register(out: str, name: str, experiment: str, tracking_uri: str | None) -> str:
    """Log the saved model as a run's `deeplab_model` artifact and make it a registry version."""
    from mlflow.tracking import MlflowClient

    from pipelines import tracking
    from pipelines.model_uri import MODEL_ARTIFACT

    uri = tracking.tracking_uri(tracking_uri)
    experiment_id = tracking.setup(experiment, uri)
    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id, run_name=f"import {os.path.basename(out)}").info.run_id
    for file in (MODEL_FILE, SPEC_FILE):
        client.log_artifact(run_id, os.path.join(out, file), MODEL_ARTIFACT)
    client.set_terminated(run_id)
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    version = client.create_model_version(name, f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}",
                                          run_id=run_id)
    return f"models:/{name}/{version.version}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caffemodel", required=True, help="the released .caffemodel file")
    p.add_argument("--model", required=True, help="e.g. deeplabv2_resnet101_aspp_l, deeplabv2_vgg16_largefov")
    p.add_argument("--num-classes", type=int, required=True, help="classes of the model to build (VOC: 21)")
    p.add_argument("--dataset", default="voc", choices=sorted(LABEL_SETS), help="its label set (default voc)")
    p.add_argument("--out", required=True, help="the saved-model directory to create (model.pt + model.json)")
    p.add_argument("--allow-missing", action="store_true",
                   help="leave the classifier fresh when the file's head does not fit (e.g. init.caffemodel)")
    p.add_argument("--register", metavar="NAME", help="also register the model in MLflow under NAME")
    p.add_argument("--experiment", default="caffe-imports", help="MLflow experiment of the import run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlruns)")
    args = p.parse_args(argv)
    summary = import_caffe(args.caffemodel, args.model, args.num_classes, args.out, args.dataset, args.allow_missing)
    if args.register:
        summary["model_uri"] = register(args.out, args.register, args.experiment, args.tracking_uri)
        log(f"import_caffe: registered as {summary['model_uri']}")
    emit_summary(summary)


if __name__ == "__main__":
    raise SystemExit(run(main))
