"""Evaluation against brute force, the Cityscapes labelIds export, the CRF search, and the MLflow
comparison table on a sqlite store and on a real mlflow server."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.fs as pafs
import pytest
from mlflow.tracking import MlflowClient

from deeplab_core.data.codec import decode_label, encode_png
from deeplab_core.data.labels import CITYSCAPES, IGNORE_INDEX, VOC, cityscapes_to_train_ids
from deeplab_core.data.layouts import find_examples, load_label
from deeplab_core.metrics import ConfusionMatrix
from deeplab_core.data.synth import write_cityscapes, write_voc
from deeplab_core.search import coarse_to_fine
from pipelines import compare, crf_search, evaluate
from pipelines.segment_io import write_outputs
from pipelines.tracking import setup as tracking_setup


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def brute_force(pairs, num_classes):
    """Per-class IoU and accuracies by counting pixel sets, image by image."""
    inter, union, gt_count = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    correct = total = 0
    for pred, gt in pairs:
        valid = gt != IGNORE_INDEX
        for c in range(num_classes):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
            gt_count[c] += g.sum()
        total += valid.sum()
        correct += ((pred == gt) & valid).sum()
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    acc = np.where(gt_count > 0, inter / np.maximum(gt_count, 1), np.nan)
    return iou, correct / total, np.nanmean(acc)


def test_predictions_folder_equals_brute_force(tmp_path, capsys, tracking, run):
    root = tmp_path / "voc"
    write_voc(root, train=2, val=6, seed=3, size=(64, 48), classes=6)
    fs = pafs.LocalFileSystem()
    examples = find_examples(fs, str(root), "voc", ["val"])["val"]
    rng = np.random.default_rng(0)
    pred_dir, pairs = tmp_path / "pred" / "nested", []
    pred_dir.mkdir(parents=True)
    for ex in examples:
        gt = load_label(fs, ex)
        pred = np.where(gt == IGNORE_INDEX, rng.integers(0, 7, gt.shape), gt).astype(np.uint8)
        noise = rng.random(gt.shape) < 0.2
        pred[noise] = rng.integers(0, 9, noise.sum())
        (pred_dir / f"{ex.image_id}.png").write_bytes(encode_png(pred, VOC.flat_palette()))
        pairs.append((pred, gt))
    assert evaluate.main(["--dataset", "voc", "--gt-root", str(root), "--split", "val",
                          "--pred", str(tmp_path / "pred")]) == 0
    summary = last_json(capsys)
    iou, pixel_accuracy, mean_accuracy = brute_force(pairs, VOC.num_classes)
    got = np.array([np.nan if summary["per_class_iou"][c] is None else summary["per_class_iou"][c]
                    for c in VOC.classes])
    np.testing.assert_allclose(got, iou, equal_nan=True)
    assert summary["miou"] == pytest.approx(np.nanmean(iou))
    assert summary["pixel_accuracy"] == pytest.approx(pixel_accuracy)
    assert summary["mean_accuracy"] == pytest.approx(mean_accuracy)
    assert summary["images"] == len(examples) and set(summary["trimap_miou"]) == {str(w) for w in range(1, 41)}
    logged = MlflowClient().get_run(summary["mlflow_run_id"])
    assert logged.data.metrics["eval_miou"] == pytest.approx(summary["miou"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(logged.info.run_id, "evaluation/val")}
    assert {"evaluation/val/trimap.png", "evaluation/val/evaluation.json"} <= artifacts

    # the size mismatch names the file; a missing prediction names the image
    bad = pred_dir / f"{examples[0].image_id}.png"
    bad.write_bytes(encode_png(np.zeros((10, 12), np.uint8)))
    argv = ["--dataset", "voc", "--gt-root", str(root), "--pred", str(tmp_path / "pred")]
    code, err = run(evaluate.main, argv), capsys.readouterr().err
    assert code == 2 and f"{bad}: prediction is 12x10 but the ground truth" in err, err
    bad.unlink()
    code, err = run(evaluate.main, argv), capsys.readouterr().err
    assert code == 2 and f"no prediction for {examples[0].image_id}" in err, err


def test_cityscapes_label_ids_export_maps_back(tmp_path, capsys, tracking):
    root = tmp_path / "cs"
    write_cityscapes(root, train=1, val=3, seed=2, size=(64, 32))
    fs = pafs.LocalFileSystem()
    examples = find_examples(fs, str(root), "cityscapes", ["val"])["val"]
    train_ids = [load_label(fs, ex) for ex in examples]
    for ids in train_ids:
        ids[ids == IGNORE_INDEX] = 0  # a model never predicts ignore
    all_ids = np.arange(CITYSCAPES.num_classes, dtype=np.uint8).reshape(1, -1).repeat(2, 0)
    batch = {"source": [ex.image for ex in examples] + ["all"],
             "relative": [f"{Path(ex.image).parent.name}/{Path(ex.image).name}" for ex in examples] + ["all.png"],
             "version": ["v"] * (len(examples) + 1), "orientation": [1] * (len(examples) + 1),
             "frames": [1] * (len(examples) + 1), "scale": [1.0] * (len(examples) + 1),
             "decode_ms": [0.0] * (len(examples) + 1),
             "model_ms": [0.0] * (len(examples) + 1), "crf_ms": [0.0] * (len(examples) + 1),
             "crf_scale": [0.0] * (len(examples) + 1), "mask": train_ids + [all_ids], "status": ["ok"] * (len(examples) + 1),
             "error": [""] * (len(examples) + 1), "tile": [0] * (len(examples) + 1),
             "confidence": [np.full_like(m, 255) for m in train_ids + [all_ids]],
             "entropy": [np.zeros_like(m) for m in train_ids + [all_ids]]}
    out = tmp_path / "seg"
    spec = {"num_classes": CITYSCAPES.num_classes, **CITYSCAPES.to_dict()}
    rows = write_outputs(batch, str(out), spec, label_ids=True, overlays=False, model_uri="m", crf=None)
    assert rows["status"] == ["ok"] * (len(examples) + 1)
    exported = decode_label((out / "masks" / "all.png").read_bytes())
    assert sorted(set(exported.ravel().tolist())) == [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                                      31, 32, 33]  # the official labelIds of the 19 classes
    np.testing.assert_array_equal(cityscapes_to_train_ids(exported), all_ids)
    (out / "masks" / "all.png").unlink()

    assert evaluate.main(["--dataset", "cityscapes", "--gt-root", str(root), "--pred", str(out / "masks")]) == 0
    summary = last_json(capsys)
    assert summary["pixel_accuracy"] == 1.0 and summary["images"] == len(examples)


def test_coarse_to_fine_recovers_a_planted_optimum():
    planted = {"bi_w": 4.6, "bi_xy_std": 72.0, "bi_rgb_std": 3.9}
    calls = []

    def score(settings):
        calls.append(len(settings))
        return [-sum(((s[k] - planted[k]) / (hi - lo)) ** 2 for k, (lo, hi) in crf_search.AXES.items())
                for s in settings]

    best, value, table = coarse_to_fine(score, crf_search.AXES, points=3, rounds=8)
    for k, (lo, hi) in crf_search.AXES.items():
        assert abs(best[k] - planted[k]) <= (hi - lo) / 2 ** 8, (k, best)
    assert calls[0] == 27 and all(0 < c <= 27 for c in calls) and len(table) == sum(calls)
    assert value == max(v for _, v in table)


def test_crf_search_on_a_constructed_case(ray_local):
    """Sharp two-colour scenes with blurred class probabilities: the CRF must pull the boundary back,
    and the search must return the best setting of everything it scored, better than no CRF."""
    from scipy.ndimage import gaussian_filter

    examples = []
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:40, :48]
    for i in range(3):
        label = np.zeros((40, 48), np.uint8)
        label[(yy - 20) ** 2 + (xx - 14 - 4 * i) ** 2 < 81] = 1
        label[8 + i:30, 30:44] = 2
        colours = np.array([[40, 40, 40], [210, 60, 50], [50, 70, 200]], np.uint8)
        image = np.clip(colours[label] + rng.normal(0, 6, (40, 48, 3)), 0, 255).astype(np.uint8)
        onehot = np.stack([(label == c).astype(np.float32) for c in range(3)])
        blurred = np.stack([gaussian_filter(p, 4) for p in onehot]) + 1e-3
        examples.append((image, np.log(blurred / blurred.sum(0)), label))
    fixed = {"pos_w": 3.0, "pos_xy_std": 3.0, "iterations": 5}
    best, value, table = crf_search.search(examples, 3, fixed, points=2, rounds=2)
    brute = {tuple(s.values()): crf_search.crf_miou(examples, 3, {**fixed, **s}) for s, _ in table}
    assert value == pytest.approx(max(brute.values())) and brute[tuple(best.values())] == pytest.approx(value)
    assert value > crf_search.crf_miou(examples, 3, None) + 0.02


def make_runs(experiment: str) -> dict[str, str]:
    """Training-like runs: the params train.py logs, val and eval metrics."""
    experiment_id = tracking_setup(experiment)
    grid = {"largefov-poly": ("deeplabv2_vgg16_largefov", "poly", "False", "None", 0.61, 0.66),
            "aspp_l-step-msc": ("deeplabv2_resnet101_aspp_l", "step", "True", "/w/resnet101.pth", 0.70, None),
            "v3plus": ("deeplabv3plus_mobilenetv3", "poly", "False", "None", 0.73, 0.75)}
    ids = {}
    for name, (model, policy, msc, init, miou, miou_crf) in grid.items():
        dataset = "voc" if name != "aspp_l-step-msc" else "pascal_context"
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags={"dataset": dataset}) as r:
            mlflow.log_params({"model.name": model, "train.lr_policy": policy, "model.msc": msc,
                               "model.init_weights": init, "data.scale_range": "[0.5, 1.5]", "data.flip": "True",
                               "train.iterations": 100})
            mlflow.log_metric("val_miou", miou - 0.01)
            if miou_crf is not None:
                mlflow.log_metrics({"eval_miou": miou, "eval_miou_crf": miou_crf})
            ids[name] = r.info.run_id
    return ids


def check_table(capsys, experiment: str):
    assert compare.main(["--experiment", experiment, "--format", "csv"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    table = out[next(i for i, line in enumerate(out) if line.startswith("dataset,run,")):-1]
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO("\n".join(table)))}
    assert list(rows) == ["aspp_l-step-msc", "largefov-poly", "v3plus"]  # grouped by dataset, then by start
    assert [r["dataset"] for r in rows.values()] == ["pascal_context", "voc", "voc"]
    assert rows["largefov-poly"] | {} == {**rows["largefov-poly"], "model": "deeplabv2", "backbone": "vgg16",
                                         "LargeFOV": "yes", "ASPP": "", "MSC": "", "pretrained": "",
                                         "LR policy": "poly", "mIoU": "61.00", "mIoU + CRF": "66.00",
                                         "augmentation": "scale [0.5, 1.5], flip"}
    assert (rows["aspp_l-step-msc"]["ASPP"], rows["aspp_l-step-msc"]["MSC"], rows["aspp_l-step-msc"]["pretrained"],
            rows["aspp_l-step-msc"]["LR policy"], rows["aspp_l-step-msc"]["mIoU"],
            rows["aspp_l-step-msc"]["mIoU + CRF"]) == ("ASPP-L", "yes", "yes", "step", "69.00", "")
    assert rows["v3plus"]["ASPP"] == "ASPP (v3+)" and rows["v3plus"]["mIoU"] == "73.00"
    assert summary["runs"] == 3 and summary["comparison_run_id"]
    artifacts = {a.path for a in MlflowClient().list_artifacts(summary["comparison_run_id"])}
    assert {"comparison.md", "comparison.csv", "comparison.html", "comparison.png"} <= artifacts
    # the summary run is not listed itself
    assert compare.main(["--experiment", experiment, "--no-log"]) == 0
    assert last_json(capsys)["runs"] == 3


def test_compare_on_sqlite_store(capsys, tracking):
    make_runs("ablation")
    check_table(capsys, "ablation")
    tracking_setup("empty")
    with pytest.raises(ValueError, match="'empty' has no training runs"):
        compare.compare("empty")
    with pytest.raises(ValueError, match="'missing' not found .* available: .*ablation"):
        compare.compare("missing")


def test_compare_against_mlflow_server(capsys, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    make_runs("ablation-server")
    check_table(capsys, "ablation-server")


def test_evaluate_bad_arguments(run, capsys, tmp_path):
    for argv, words in ((["--model", "m"], "missing --data"), ([], "give either"),
                        (["--model", str(tmp_path), "--data", str(tmp_path)], "not a saved model")):
        code, err = run(evaluate.main, argv), capsys.readouterr().err
        assert code == 2 and words in err.strip().splitlines()[-1], err


def test_cityscapes_predictions_in_ignored_ids_match_the_official_evaluation(tmp_path, capsys, tracking):
    """Predictions holding ignored labelIds (0 unlabeled, 1 ego vehicle, 3 out of roi, ...) are misses
    of the ground-truth class: per-class IoU and mIoU equal cityscapesscripts' own numbers."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    root = tmp_path / "cs"
    write_cityscapes(root, train=0, val=3, seed=5, size=(96, 48))
    rng = np.random.default_rng(0)
    ignored_ids = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]
    pred_dir, predictions, truths = tmp_path / "pred", [], []
    pred_dir.mkdir()
    for gt_path in sorted((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png")):
        prediction = decode_label(gt_path.read_bytes()).copy()
        noise = rng.random(prediction.shape)
        prediction[noise < 0.2] = rng.choice(ignored_ids, size=int((noise < 0.2).sum()))
        prediction[(noise >= 0.2) & (noise < 0.35)] = rng.choice([7, 8, 11, 21, 23, 24, 26],
                                                                  size=int(((noise >= 0.2) & (noise < 0.35)).sum()))
        path = pred_dir / gt_path.name.replace("_gtFine_labelIds", "_leftImg8bit")
        path.write_bytes(encode_png(prediction))
        predictions.append(str(path))
        truths.append(str(gt_path))

    assert evaluate.main(["--dataset", "cityscapes", "--gt-root", str(root), "--pred", str(pred_dir)]) == 0
    ours = last_json(capsys)

    official.args.evalInstLevelScore = False  # its instance statistics fail on current numpy
    official.args.JSONOutput = False
    official.args.quiet = True
    result = official.evaluateImgLists(predictions, truths, official.args)
    evaluated = {official.id2label[i].name for i in official.args.evalLabels
                 if not official.id2label[i].ignoreInEval}  # the 19 classes
    theirs = {name: (None if np.isnan(v) else v) for name, v in result["classScores"].items() if name in evaluated}
    assert set(theirs) == set(ours["per_class_iou"])
    for name, value in theirs.items():
        assert ours["per_class_iou"][name] == pytest.approx(value, abs=1e-12) if value is not None \
            else ours["per_class_iou"][name] is None, name
    assert ours["miou"] == pytest.approx(result["averageScoreClasses"], abs=1e-12)
    assert ours["miou"] < 0.8  # the noise costs something: the check is not vacuous


def test_predictions_outside_the_classes_are_misses_not_crashes():
    gt = np.array([[0, 1, 2, 255]], np.uint8)
    pred = np.array([[255, 1, 7, 3]], np.uint8)
    cm = ConfusionMatrix(3).update(pred, gt)
    # class 0: its only pixel missed; class 1: hit; class 2: missed, no false positive anywhere
    np.testing.assert_allclose(cm.iou(), [0.0, 1.0, 0.0])
    assert cm.pixel_accuracy() == pytest.approx(1 / 3) and cm.matrix.sum() == 3
