"""PASCAL-Context (both layouts) and PASCAL-Person-Part: synthetic trees in the release layouts,
preprocessed with Ray, every Parquet row checked against an independent reading of the raw files;
bad items recorded; a 2-worker training run on each learns."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from deeplab_core.data.codec import decode_label
from deeplab_core.data.labels import CONTEXT_CLASSES, PERSON_PART_CLASSES
from deeplab_core.data.synth import write_pascal_context, write_pascal_person_part
from deeplab_core.metrics import ConfusionMatrix
from pipelines.datasets import load_manifest, read_rows, split_files
from pipelines.preprocess import preprocess
from tests.test_train import initial_miou, tiny_config

SIZE = (64, 48)


def rows_by_id(out: Path, split: str) -> dict[str, np.ndarray]:
    manifest = load_manifest(str(out))
    return {r["image_id"]: decode_label(r["label"]) for r in read_rows(split_files(str(out), manifest, split))}


def context_by_name(root: Path, image_id: str) -> np.ndarray:
    """The .mat's LabelMap, each label id mapped by its name in labels.txt to the project's classes
    (59_labels.txt says which are kept, in its own spelling); all else background."""
    def names(file):
        return dict(line.split(": ", 1) for line in (root / file).read_text().splitlines())
    spelled = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
    kept = {spelled.get(n, n) for n in names("59_labels.txt").values()}
    label_map = loadmat(root / "trainval" / f"{image_id}.mat")["LabelMap"]
    out = np.zeros(label_map.shape, np.uint8)
    for number, name in names("labels.txt").items():
        if name in kept:
            out[label_map == int(number)] = CONTEXT_CLASSES.index(name)
    return out


@pytest.fixture(scope="module")
def context(ray_local, tmp_path_factory):
    base = tmp_path_factory.mktemp("context")
    for layout in ("original", "mmseg", "both"):
        write_pascal_context(base / layout, train=12, val=4, seed=5, size=SIZE, layout=layout, classes=3)
    return base


def test_context_rows_match_the_release_read_by_name_in_both_layouts(context, capfd):
    rows = {}
    for layout in ("original", "mmseg"):
        summary = preprocess("pascal_context", str(context / layout), str(context / f"pq_{layout}"))
        assert summary["errors"] == 0
        rows[layout] = {split: rows_by_id(context / f"pq_{layout}", split) for split in ("train", "val")}
    assert load_manifest(str(context / "pq_original"))["num_classes"] == 60
    seen = set()
    for split in ("train", "val"):
        assert rows["original"][split].keys() == rows["mmseg"][split].keys() and rows["original"][split]
        for image_id, label in rows["original"][split].items():
            np.testing.assert_array_equal(label, context_by_name(context / "original", image_id))
            np.testing.assert_array_equal(label, rows["mmseg"][split][image_id])
            seen |= set(np.unique(label).tolist())
    assert seen == {0, 1, 2, 3}  # the objects of classes outside the 59 became background
    preprocess("pascal_context", str(context / "both"), str(context / "pq_both"))
    assert "holds both PASCAL-Context layouts; reading the original release" in capfd.readouterr().err


def test_context_reads_the_release_spellings_and_order():
    from deeplab_core.data.synth import context_label_files

    labels_txt, kept_txt, _ = context_label_files(0)
    kept = [line.split(": ")[1] for line in kept_txt.splitlines()]
    assert {"diningtable", "bedcloth", "clothes"} <= set(kept) and "table" not in kept
    assert kept != sorted(kept) and len(labels_txt.splitlines()) == 459


def test_bad_items_are_recorded_and_the_rest_written(context, tmp_path):
    root = tmp_path / "ctx"
    ids = write_pascal_context(root, train=6, val=2, seed=7, size=SIZE)
    victim = root / "trainval" / f"{ids['train'][0]}.mat"
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated .mat
    parts = tmp_path / "parts"
    ids = write_pascal_person_part(parts, train=6, val=2, seed=7, size=SIZE)
    missing = parts / "pascal_person_part" / "pascal_person_part_gt" / f"{ids['train'][1]}.png"
    missing.unlink()
    for dataset, source, bad, reason in (("pascal_context", root, victim.stem, "unreadable PASCAL-Context .mat"),
                                         ("pascal_person_part", parts, missing.stem, "missing label file")):
        out = tmp_path / f"pq_{dataset}"
        summary = preprocess(dataset, str(source), str(out))
        errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
        assert summary["errors"] == 1 and errors[0]["image_id"] == bad and reason in errors[0]["reason"], errors
        assert len(rows_by_id(out, "train")) == 5 and len(rows_by_id(out, "val")) == 2


@pytest.mark.parametrize("lists", ["ids", "paths"])
def test_person_part_rows_are_the_palette_indices(ray_local, tmp_path, lists):
    root = tmp_path / "parts"
    ids = write_pascal_person_part(root, train=8, val=3, seed=2, size=SIZE, lists=lists)
    preprocess("pascal_person_part", str(root), str(tmp_path / "pq"))
    manifest = load_manifest(str(tmp_path / "pq"))
    assert manifest["num_classes"] == 7 and manifest["classes"] == list(PERSON_PART_CLASSES)
    for split in ("train", "val"):
        rows = rows_by_id(tmp_path / "pq", split)
        assert sorted(rows) == sorted(ids[split])
        for image_id, label in rows.items():
            png = Image.open(io.BytesIO((root / "pascal_person_part" / "pascal_person_part_gt" /
                                         f"{image_id}.png").read_bytes()))
            assert png.mode == "P"
            np.testing.assert_array_equal(label, np.asarray(png))


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["pascal_context", "pascal_person_part"])
def test_two_workers_learn_each_dataset(ray_local, tmp_path, dataset):
    raw = tmp_path / "raw"
    if dataset == "pascal_context":
        write_pascal_context(raw, train=16, val=6, seed=11, size=SIZE, classes=3)
    else:
        write_pascal_person_part(raw, train=16, val=6, seed=11, size=SIZE)
    preprocess(dataset, str(raw), str(tmp_path / "pq"))
    from pipelines.train import train

    cfg = tiny_config(str(tmp_path / "pq"), tmp_path, "train.iterations=10", "train.checkpoint_interval=10",
                      "train.eval_interval=10", f"tracking.run_name={dataset}")
    summary = train(cfg)
    assert summary["val_miou"] > initial_miou(cfg, str(tmp_path / "pq")) + 0.05, summary


@pytest.mark.parametrize("dataset", ["pascal_context", "pascal_person_part"])
def test_evaluate_scores_png_predictions_against_the_raw_tree(tmp_path, capsys, tracking, dataset):
    from pipelines import evaluate

    root, pred = tmp_path / "raw", tmp_path / "pred"
    if dataset == "pascal_context":
        ids = write_pascal_context(root, train=2, val=4, seed=3, size=SIZE, classes=3)
        truth = {i: context_by_name(root, i) for i in ids["val"]}
    else:
        ids = write_pascal_person_part(root, train=2, val=4, seed=3, size=SIZE)
        truth = {i: np.asarray(Image.open(root / "pascal_person_part" / "pascal_person_part_gt" / f"{i}.png"))
                 for i in ids["val"]}
    pred.mkdir()
    num_classes = len(CONTEXT_CLASSES) if dataset == "pascal_context" else len(PERSON_PART_CLASSES)
    expected = ConfusionMatrix(num_classes)
    for image_id, label in truth.items():  # the ground truth, one image shifted by a class
        guess = (label + 1) % 3 if image_id == ids["val"][0] else label
        Image.fromarray(guess.astype(np.uint8)).save(pred / f"{image_id}.png")
        expected.update(guess, label)
    assert evaluate.main(["--dataset", dataset, "--gt-root", str(root), "--split", "val", "--pred", str(pred)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["images"] == 4 and summary["miou"] == pytest.approx(expected.miou()) and expected.miou() < 1, summary
