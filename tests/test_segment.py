"""Batch segmentation on a real local Ray instance: local folders and S3 on moto_server, bad files,
equality with deeplab_core called directly, incremental reruns, a killed run, MLflow model URIs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from deeplab_core.checkpoint import load_model
from deeplab_core.crf import CRF_PRESETS, CRFParams, dense_crf
from deeplab_core.data.codec import decode_image
from deeplab_core.data.labels import VOC
from deeplab_core.data.synth import write_voc
from deeplab_core.inference import predict_probabilities
from pipelines import segment
from pipelines.tracking import setup as tracking_setup
from pipelines.model_uri import download_model
from tests.conftest import upload_tree

BIG_SIDE = 200  # the over-large planted image is 200×200; --max-pixels sits below it


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """8 synthetic VOC JPEGs (160×120) in two sub-folders, plus four bad files."""
    raw = tmp_path_factory.mktemp("raw")
    write_voc(raw, train=6, val=2, seed=5, size=(160, 120), classes=5)
    root = tmp_path_factory.mktemp("bucket")
    for i, jpg in enumerate(sorted((raw / "VOCdevkit/VOC2012/JPEGImages").glob("*.jpg"))):
        target = root / ("day1" if i % 2 else "day2") / jpg.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(jpg, target)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.png").write_text("not an image\n")
    (bad / "truncated.jpg").write_bytes(next(root.glob("day1/*.jpg")).read_bytes()[:300])
    Image.new("RGB", (BIG_SIDE, BIG_SIDE), (9, 9, 9)).save(bad / "huge.png")
    return root


GOOD, BAD = 8, 4


def run_segment(capsys, *args: str) -> tuple[int, dict]:
    code = segment.main(list(args))
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def summary_rows(output) -> list[dict]:
    from pipelines import storage

    fs, path = storage.resolve(str(output))
    return pq.read_table(f"{path}/summary", filesystem=fs).to_pylist()


@pytest.mark.parametrize("crf, backend", [(True, "auto"), (True, "torch"), (False, "auto")],
                         ids=["crf", "crf-torch", "no-crf"])
def test_local_folder_masks_equal_direct_calls(ray_local, capsys, tmp_path, model_dir, images, tracking, crf, backend):
    out = tmp_path / "out"
    args = ["--model", str(model_dir), "--input", str(images), "--output", str(out), "--batch-size", "1",
            "--max-pixels", str(BIG_SIDE * BIG_SIDE - 1), "--overlays", "--crf-backend", backend] + (
        [] if crf else ["--no-crf"])
    ran = "pydensecrf" if backend == "auto" else backend  # auto on a CPU-only cluster
    code, summary = run_segment(capsys, *args)
    assert code == 0
    assert summary == {**summary, "images": GOOD, "errors": BAD, "skipped": 0, "output": str(out)}

    rows = {Path(r["source"]).name: r for r in summary_rows(out)}
    assert len(rows) == GOOD + BAD
    reasons = {name: rows[name]["error"] for name in ("empty.jpg", "notes.png", "truncated.jpg", "huge.png")}
    assert reasons["empty.jpg"] == "empty file"
    assert "not an image" in reasons["notes.png"]
    assert "not a readable image" in reasons["truncated.jpg"]
    assert f"{BIG_SIDE}x{BIG_SIDE} exceeds" in reasons["huge.png"]
    assert all(rows[n]["status"] == "error" and not rows[n]["mask_uri"] for n in reasons)

    model, _ = load_model(model_dir)
    classes_seen = set()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the model actor (--model-cpus 1): convolutions round by thread count
    for source in sorted(images.glob("day*/*.jpg")):
        row = rows[source.name]
        assert row["status"] == "ok" and row["mask_uri"] == str(out / "masks" / source.parent.name / f"{source.stem}.png")
        mask_image = Image.open(row["mask_uri"])
        assert mask_image.mode == "P"
        mask = np.array(mask_image)
        image = decode_image(source.read_bytes())
        probs = predict_probabilities(model, image)  # the model's own forward, softmaxed
        expected = (dense_crf(image, probs, CRFParams(), ran) if crf else probs).argmax(0)
        np.testing.assert_array_equal(mask, expected)
        assert row["class_pixels"] == np.bincount(mask.ravel(), minlength=VOC.num_classes).tolist()
        assert (row["height"], row["width"]) == image.shape[:2]
        assert (out / "overlays" / source.parent.name / f"{source.stem}.jpg").is_file()
        assert (row["crf_ms"] > 0) and row["model_ms"] > 0 and json.loads(row["crf_params"] or "null") == (
            CRFParams().to_dict() if crf else None) and row["crf_backend"] == (ran if crf else "")
        classes_seen |= set(np.unique(mask).tolist())
    torch.set_num_threads(threads)
    assert len(classes_seen) >= 2, "a constant mask would make the equality check meaningless"

    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("batch-segmentation").experiment_id])
    assert runs[0].data.metrics["images"] == GOOD and runs[0].data.metrics["errors"] == BAD
    assert runs[0].data.params["model_uri"] == str(model_dir)
    assert runs[0].data.params.get("crf_backend") == (ran if crf else None)


def test_incremental_reruns_and_force(ray_local, capsys, tmp_path, model_dir, images, tracking):
    work = tmp_path / "in"
    shutil.copytree(images / "day1", work / "day1")
    out = tmp_path / "out"
    base = ["--model", str(model_dir), "--input", str(work), "--output", str(out), "--no-crf"]
    assert run_segment(capsys, *base)[1]["images"] == 4
    code, summary = run_segment(capsys, *base)
    assert (code, summary["images"], summary["skipped"], summary["errors"]) == (0, 0, 4, 0)
    for name in sorted(os.listdir(images / "day2"))[:2]:
        shutil.copy(images / "day2" / name, work / name)
    code, summary = run_segment(capsys, *base)
    assert (code, summary["images"], summary["skipped"]) == (0, 2, 4)
    # a changed file is redone
    changed = next((work / "day1").iterdir())
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert run_segment(capsys, *base)[1]["images"] == 1
    code, summary = run_segment(capsys, *base, "--force")
    assert (summary["images"], summary["skipped"]) == (6, 0)
    assert len(summary_rows(out)) == 6  # --force starts the record afresh


def test_s3_bucket_with_s3_model(ray_local, capsys, s3_client, model_dir, images, tracking):
    upload_tree(s3_client, images, "nightly", "images/2026-11-24")
    upload_tree(s3_client, model_dir, "models", "voc/checkpoint_00000100")
    out = "s3://nightly/masks/2026-11-24"
    code, summary = run_segment(capsys, "--model", "s3://models/voc/checkpoint_00000100", "--input",
                                "s3://nightly/images/2026-11-24", "--output", out, "--crf-actors", "2")
    # huge.png is under the default pixel limit: it is segmented here
    assert code == 0 and (summary["images"], summary["errors"], summary["skipped"]) == (GOOD + 1, BAD - 1, 0)
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket="nightly", Prefix="masks/")["Contents"]}
    for source in images.glob("day*/*.jpg"):
        assert f"masks/2026-11-24/masks/{source.parent.name}/{source.stem}.png" in keys
    assert not any(".tmp" in k for k in keys)
    assert {r["status"] for r in summary_rows(out)} == {"ok", "error"}
    assert run_segment(capsys, "--model", "s3://models/voc/checkpoint_00000100", "--input",
                       "s3://nightly/images/2026-11-24", "--output", out)[1]["skipped"] == GOOD + BAD


def test_keys_that_leave_the_prefix_are_refused(ray_local, capsys, s3_client, model_dir, images, tracking, tmp_path):
    s3_client.create_bucket(Bucket="hostile")
    good = next(images.glob("day1/*.jpg")).read_bytes()
    for key in ("night/ok.jpg", "night/../../escape.jpg", "night/sub/../../../escape2.jpg"):
        s3_client.put_object(Bucket="hostile", Key=key, Body=good)
    out = tmp_path / "out"
    code, summary = run_segment(capsys, "--model", str(model_dir), "--input", "s3://hostile/night", "--output",
                                str(out), "--no-crf")
    assert code == 0 and (summary["images"], summary["errors"]) == (1, 2)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")
                     if not p.relative_to(tmp_path).as_posix().startswith("artifacts/"))  # the MLflow store's
    assert written == ["out/masks/ok.png"], written
    errors = [r["error"] for r in summary_rows(str(out)) if r["status"] == "error"]
    assert len(errors) == 2 and all("points outside the input prefix" in e for e in errors)


def test_exif_rotated_photos_are_segmented_as_shown(ray_local, capsys, tmp_path, model_dir, images, tracking):
    """A photo stored sideways with EXIF orientation 6 gets the mask of the upright photo, in the
    displayed size; the summary records the orientation; --keep-sensor-orientation keeps the stored order."""
    shown = decode_image(next(images.glob("day1/*.jpg")).read_bytes())  # 120 rows × 160 columns
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    Image.fromarray(shown).save(bucket / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown = stored turned 90° clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(shown, 1))).save(bucket / "turned.png", exif=exif)
    for flags, out in (([], tmp_path / "shown"), (["--keep-sensor-orientation"], tmp_path / "sensor")):
        code, summary = run_segment(capsys, "--model", str(model_dir), "--input", str(bucket), "--output", str(out),
                                    "--no-crf", *flags)
        assert code == 0 and summary["images"] == 2
    masks = {p.parent.parent.name + "/" + p.stem: np.array(Image.open(p)) for p in tmp_path.glob("*/masks/*.png")}
    assert masks["shown/turned"].shape == shown.shape[:2] and masks["sensor/turned"].shape == shown.shape[1::-1]
    np.testing.assert_array_equal(masks["shown/turned"], masks["shown/upright"])
    rows = {r["relative"]: r for r in summary_rows(tmp_path / "shown")}
    assert (rows["turned.png"]["orientation"], rows["upright.png"]["orientation"]) == (6, 1)
    assert rows["turned.png"]["frames"] == 1 and (rows["turned.png"]["height"], rows["turned.png"]["width"]) == (120, 160)


def test_images_larger_than_the_training_scale_are_shrunk_for_the_network_only(ray_local, capsys, tmp_path,
                                                                                model_dir, images, tracking):
    """A model trained on 80-pixel images: `--scale auto` runs the 160×120 photos at half size,
    `native` and `N` as asked, the CRF on at most --crf-max-pixels; `--tile 128` sends them through in
    overlapping windows and refines them by tiles, within 3% of the whole-frame masks; every mask has
    the photo's size."""
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    spec = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**spec, "trained_long_side": 80}))
    runs = {"auto": ["--scale", "auto"], "native": ["--scale", "native"],
            "40": ["--scale", "40", "--crf-max-pixels", "4800"],
            "tiled": ["--scale", "native", "--tile", "128", "--tile-overlap", "32"]}
    found = {}
    for name, flags in runs.items():
        out = tmp_path / name
        code, summary = run_segment(capsys, "--model", str(model), "--input", str(images / "day1"), "--output",
                                    str(out), *flags)
        assert code == 0 and summary["images"] == 4
        rows = summary_rows(out)
        assert all((r["height"], r["width"]) == (120, 160) for r in rows)
        assert all(Image.open(p).size == (160, 120) for p in out.glob("masks/*.png"))
        found[name] = ({r["scale"] for r in rows}, {r["crf_scale"] for r in rows}, {r["tile"] for r in rows})
    assert found == {"auto": ({0.5}, {1.0}, {0}), "native": ({1.0}, {1.0}, {0}), "40": ({0.25}, {0.5}, {0}),
                     "tiled": ({1.0}, {1.0}, {128})}
    for whole in sorted((tmp_path / "native" / "masks").glob("*.png")):
        tiled = np.array(Image.open(tmp_path / "tiled" / "masks" / whole.name))
        assert np.mean(tiled == np.array(Image.open(whole))) > 0.97


def test_out_of_memory_splits_the_group_and_costs_only_the_image_that_does_not_fit(model_dir, images):
    """The model stage (in this process) whose network runs out of memory above a pixel count, as a GPU
    would (a test hook: the stage's own model patched): the group is split in halves and retried, the
    masks equal the unconstrained run's; an image that alone does not fit is retried in tiles (masks
    within 1% of the whole run's); a tile that does not fit is one error row; and the stage goes on
    at full size with the next batch."""
    from pipelines.segmentation import ModelStage

    pictures = [decode_image(p.read_bytes()) for p in sorted(images.glob("day*/*.jpg"))]
    batch = {"source": [f"s{i}" for i in range(8)], "image": pictures, "status": ["ok"] * 8, "error": [""] * 8}
    stage = ModelStage(str(model_dir), masks=True)
    expected = stage(batch)["mask"]
    network, calls = stage.model.coarse_logits, []

    def coarse_logits(x):
        calls.append(x.shape[0])
        if x.shape[0] * x.shape[-2] * x.shape[-1] > room:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return network(x)

    stage.model.coarse_logits = coarse_logits
    room = 2 * 120 * 160  # two images at a time
    out = stage(batch)
    assert out["status"] == ["ok"] * 8 and calls == [8, 4, 2, 2, 4, 2, 2]
    for got, want in zip(out["mask"], expected):
        np.testing.assert_array_equal(got, want)
    room = 120 * 160 - 1  # not even one: each image once more in tiles (128 wide: two span it), one by one
    calls.clear()
    out = stage(batch)
    assert out["status"] == ["ok"] * 8 and out["tile"] == [128] * 8
    pair = [2] + [1, 1, 1] * 2  # a pair fails, each image alone fails, then its two windows fit
    assert calls == [8] + ([4] + pair * 2) * 2
    for got, want in zip(out["mask"], expected):  # windows see less context than the whole image
        assert np.mean(got == want) > 0.99
    room = 120 * 128 - 1  # not even a tile
    out = stage(batch)
    assert out["status"] == ["error"] * 8 and set(out["error"]) == {"model: out of memory at 120×128"}
    room = 8 * 120 * 160
    assert stage(batch)["status"] == ["ok"] * 8


def test_model_uris_from_mlflow(tmp_path, model_dir, tracking):
    # Not mlflow.set_experiment: that stays set in this process, and a later train() here would be
    # refused to resume its own run of another experiment.
    with mlflow.start_run(experiment_id=tracking_setup("segment-models")) as run:
        mlflow.log_artifacts(str(model_dir), "deeplab_model")
    client = MlflowClient()
    client.create_registered_model("voc-seg")
    version = client.create_model_version("voc-seg", f"{run.info.artifact_uri}/deeplab_model", run.info.run_id).version
    for uri in (f"runs:/{run.info.run_id}", f"runs:/{run.info.run_id}/deeplab_model",
                f"models:/voc-seg/{version}", "models:/voc-seg/latest"):
        model, spec = load_model(download_model(uri, str(tmp_path / uri.replace(":", "").replace("/", "_"))))
        assert spec["num_classes"] == VOC.num_classes, uri
    for bad, words in ((str(tmp_path / "nowhere"), "not a saved model"), ("models:/nope/1", "cannot be fetched")):
        with pytest.raises(ValueError, match=words):
            download_model(bad)


def test_bad_arguments_exit_2_with_one_line(run, capsys, tmp_path, model_dir, images):
    cases = [(["--model", str(tmp_path), "--input", str(images), "--output", str(tmp_path / "o")], "not a saved model"),
             (["--model", str(model_dir), "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")],
              "input not found"),
             (["--model", str(model_dir), "--input", str(images), "--output", str(tmp_path / "o"), "--crf", "bogus=1"],
              "unknown CRF parameter 'bogus'; valid: bi_w"),
             (["--model", str(model_dir), "--input", str(images), "--output", str(tmp_path / "o"), "--crf",
               "normalization=before"], "normalization must be one of symmetric, after"),
             (["--model", str(model_dir), "--input", str(images), "--output", str(tmp_path / "o"), "--crf-backend",
               "cuda"], "invalid choice: 'cuda' (choose from 'auto', 'pydensecrf', 'torch')"),
             (["--model", str(model_dir), "--input", str(images), "--output", str(tmp_path / "o"),
               "--cityscapes-label-ids"], "not cityscapes"),
             (["--model", str(model_dir), "--input", str(images), "--output", str(tmp_path / "o"), "--scale", "huge"],
              "'huge': use auto, native or a long side in pixels")]
    for argv, words in cases:
        code, err = run(segment.main, argv), capsys.readouterr().err
        assert code == 2 and words in err.strip().splitlines()[-1], err
        assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_killed_run_reruns_to_exactly_one_mask_per_image(ray_local, capsys, tmp_path, model_dir, images, tracking):
    """The run in a process of its own with its own Ray, killed with all of it after its first commit;
    the rerun here, on this process's Ray."""
    work = tmp_path / "in"
    for k in range(4):  # 32 images
        for source in images.glob("day*/*.jpg"):
            target = work / f"copy{k}" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    out = tmp_path / "out"
    argv = ["--model", str(model_dir), "--input", str(work), "--output", str(out), "--commit-every", "4",
            "--crf-actors", "1", "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.segment", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": "local"},
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while not list((out / "_manifest").glob("*.parquet")):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first commit"
        time.sleep(0.2)
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in family:  # Ray's own daemons, wherever they went
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    done_before = sum(pq.read_table(p).num_rows for p in (out / "_manifest").glob("*.parquet"))
    assert 0 < done_before < 32

    code, summary = run_segment(capsys, *argv)
    assert code == 0
    assert summary["images"] + summary["skipped"] == 32 and summary["skipped"] >= done_before
    rows = summary_rows(out)
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in work.rglob("*.jpg"))  # once each
    masks = sorted(out.rglob("masks/**/*.png"))
    assert len(masks) == 32 and not list(out.rglob("*.tmp-*"))


def test_crf_params_from_preset_run_and_flags(tracking):
    with mlflow.start_run(experiment_id=tracking_setup("crf-search")) as run:
        mlflow.log_params({"crf.bi_w": 5.0, "crf.bi_rgb_std": 4.0, "crf.iterations": 5, "other": "x"})
    args, parser = segment.parse_args(["--model", "m", "--input", "i", "--output", "o", "--crf-preset",
                                       "vgg16_largefov_voc", "--crf-params", f"runs:/{run.info.run_id}",
                                       "--crf", "pos_w=2"])
    assert segment.crf_params(args, parser) == {**CRFParams(**{**CRF_PRESETS["vgg16_largefov_voc"].to_dict(),
                                                             "bi_w": 5.0, "bi_rgb_std": 4.0, "iterations": 5,
                                                             "pos_w": 2.0}).to_dict()}
    args, parser = segment.parse_args(["--model", "m", "--input", "i", "--output", "o", "--crf-params", "runs:/nope"])
    with pytest.raises(ValueError, match="--crf-params runs:/nope: cannot read the run"):
        segment.crf_params(args, parser)
    args, parser = segment.parse_args(["--model", "m", "--input", "i", "--output", "o", "--no-crf"])
    assert segment.crf_params(args, parser) is None
    args, parser = segment.parse_args(["--model", "m", "--input", "i", "--output", "o", "--crf", "normalization=after",
                                       "--crf", "iterations=5"])
    assert segment.crf_params(args, parser) == {**CRFParams().to_dict(), "normalization": "after", "iterations": 5}
    with pytest.raises(ValueError, match="iterations must be an integer, got '2.5'"):
        CRFParams.from_strings({"iterations": "2.5"})


def test_model_stage_makes_the_masks_itself_as_on_a_gpu(model_dir, images):
    """The GPU path (CRF in the model actor, batched torch CRF) gives the masks of the CPU pool path;
    run here on the CPU device."""
    from pipelines.segmentation import LabelStage, ModelStage

    sources = sorted(images.glob("day*/*.jpg"))[:3]
    decoded = [decode_image(s.read_bytes()) for s in sources]
    batch = {"source": [str(s) for s in sources], "image": decoded, "status": ["ok"] * 3, "error": [""] * 3}
    crf = CRFParams().to_dict()
    threads = torch.get_num_threads()
    try:
        in_model = ModelStage(str(model_dir), masks=True, crf=crf, keep_image=False)(dict(batch))
        pooled = LabelStage(crf, keep_image=False, crf_backend="torch")(ModelStage(str(model_dir))(dict(batch)))
    finally:
        torch.set_num_threads(threads)
    assert "image" not in in_model and "coarse" not in in_model and in_model["status"] == ["ok"] * 3
    for a, b, image in zip(in_model["mask"], pooled["mask"], decoded):
        assert a.shape == image.shape[:2] and a.dtype == np.uint8
        assert np.mean(a == b) > 0.999  # one batched lattice vs one per image: float sums in another order
    assert all(ms > 0 for ms in in_model["crf_ms"]) and all(ms > 0 for ms in in_model["model_ms"])
