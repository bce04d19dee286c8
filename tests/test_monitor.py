"""Knowing how a night went without labels: confidence maps and statistics from segment, each run's
distributions in MLflow, and `pipelines.monitor` judging nights against earlier ones of their job:
same generator with other seeds passes; a class three times as frequent, blurred and noised photos,
and 10% undecodable files are each flagged by their rule."""
from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy.ndimage import gaussian_filter

from deeplab_core.data.synth import render_scene
from deeplab_core.monitoring import CONFIDENCE_BINS, Distributions, jensen_shannon, population_stability
from pipelines import monitor, segment
from tests.conftest import save_colour_voc_model

NIGHT = 64  # images a night: enough that two nights of one generator stay under the JS threshold
pytestmark = pytest.mark.slow


def write_night(directory, seed: int, classes=(1, 2, 3, 4, 5), blurred: bool = False, broken: int = 0,
                images: int = NIGHT):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    for i in range(images):
        image, _, _ = render_scene(rng, 72, 96, classes, max_objects=4)
        if blurred:  # out of focus and grainy: a camera that changed
            soft = gaussian_filter(image.astype(np.float32), (3, 3, 0)) + rng.normal(0, 30, image.shape)
            image = np.clip(soft, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(directory / f"{i:03d}.jpg", quality=90)
    for i in range(broken):
        (directory / f"broken_{i}.jpg").write_bytes(b"\xff\xd8 not the rest of a jpeg")


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    root = tmp_path_factory.mktemp("nights")
    write_night(root / "first", seed=1)
    write_night(root / "second", seed=2)
    write_night(root / "other_job", seed=6, images=4)  # only its job matters
    write_night(root / "class3_thrice", seed=3, classes=(1, 2, 3, 3, 3, 4, 5))
    write_night(root / "blurred", seed=4, blurred=True)
    write_night(root / "broken", seed=5, broken=7)  # 7 of 71: 10%
    return root


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory):
    return save_colour_voc_model(tmp_path_factory.mktemp("colour") / "model")


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_divergences_are_zero_for_equal_distributions_and_grow_with_the_shift():
    p = [0.5, 0.3, 0.2, 0.0]
    assert jensen_shannon(p, p) == pytest.approx(0) and population_stability(p, p) == pytest.approx(0)
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1)
    assert 0 < jensen_shannon(p, [0.45, 0.3, 0.2, 0.05]) < jensen_shannon(p, [0.2, 0.3, 0.2, 0.3])
    assert 0 < population_stability(p, [0.45, 0.3, 0.2, 0.05]) < population_stability(p, [0.2, 0.3, 0.2, 0.3])
    a = Distributions({"x": 1.0, "y": 0.0}, {"x": 1.0, "y": 0.0}, [0.5, 0.5], images=10, pixels=100, errors=1)
    b = Distributions({"x": 0.0, "y": 1.0}, {"x": 0.0, "y": 1.0}, [0.0, 1.0], images=30, pixels=300)
    pooled = Distributions.pooled([a, b])  # weighted by pixels and images
    assert pooled.class_share == {"x": 0.25, "y": 0.75} and pooled.confidence_histogram == [0.125, 0.875]
    assert (pooled.images, pooled.errors, pooled.error_rate) == (40, 1, pytest.approx(1 / 41))


def test_nights_are_judged_against_earlier_nights_of_their_job(ray_local, capsys, tmp_path, colour_model,
                                                               nights, tracking):
    def segment_night(name: str, job: str = "nightly", *flags: str) -> str:
        assert segment.main(["--model", str(colour_model), "--input", str(nights / name), "--output",
                                  str(tmp_path / job / name), "--job", job, "--no-crf", *flags]) == 0
        capsys.readouterr()
        (latest,) = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("batch-segmentation")
                                                .experiment_id], max_results=1, order_by=["attributes.start_time DESC"])
        return latest.info.run_id

    def judge(*flags: str) -> tuple[int, dict]:
        code = monitor.main(["--experiment", "batch-segmentation", *flags])
        return code, last_json(capsys)

    first = segment_night("first", "nightly", "--confidence")
    # Confidence with every mask: maps of the mask's size, and statistics in every summary row.
    rows = pq.read_table(tmp_path / "nightly" / "first" / "summary").to_pylist()
    for row in rows:
        mask = np.array(Image.open(row["mask_uri"]))
        confidence = np.array(Image.open(row["mask_uri"].replace("/masks/", "/confidence/")))
        assert confidence.shape == mask.shape and confidence.dtype == np.uint8
        assert row["mean_confidence"] == pytest.approx(confidence.mean() / 255)
        assert sum(row["confidence_histogram"]) == mask.size and len(row["confidence_histogram"]) == CONFIDENCE_BINS
        assert 0 < row["mean_entropy"] < 1 and 0 <= row["low_confidence_fraction"] <= 1
    artifacts = {a.path for a in MlflowClient().list_artifacts(first)}
    assert {"distributions.json", "distributions.png", "least_confident.png"} <= artifacts

    assert judge() == (0, {"run_id": first, "job": "nightly", "reference_runs": [], "crossed": []})  # first night
    other = segment_night("other_job", "other-job")  # another job in the same experiment: never a reference
    assert judge("--run", other)[1]["reference_runs"] == []
    segment_night("second")
    code, same = judge()  # the last 7 nights of "nightly": the first one
    assert code == 0 and same["reference_runs"] == [first] and not same["crossed"], same
    figures = {"other seed": same}
    for night, rule in (("class3_thrice", "Jensen–Shannon"), ("blurred", "population stability"),
                        ("broken", "error rate")):
        segment_night(night)
        code, judged = judge("--reference", first)
        assert code == 3 and any(line.startswith(rule) for line in judged["crossed"]), (night, judged)
        figures[night] = judged
    assert figures["broken"]["error_rate"] == pytest.approx(7 / 71)
    monitor_runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("batch-segmentation")
                                               .experiment_id], "tags.`deeplab.kind` = 'monitor'")
    assert len(monitor_runs) == 4 and {"report.md", "report.html", "drift.png"} <= {
        a.path for a in MlflowClient().list_artifacts(monitor_runs[0].info.run_id)}
    assert judge()[1]["reference_runs"][0] != monitor_runs[0].info.run_id  # monitor runs are never references
    print("\n" + "\n".join(f"monitor figures, {name}: JS {f['js_divergence']:.4f}, PSI {f['psi']:.3f}, "
                           f"error rate {f['error_rate']:.3f}" for name, f in figures.items()), file=sys.__stderr__)  # shown by pytest -s


def test_monitor_exits_2_for_a_run_or_store_that_is_not_there(run, capsys, tracking, monkeypatch):
    assert run(monitor.main, ["--experiment", "nowhere"]) == 2
    assert "does not exist" in capsys.readouterr().err
    MlflowClient().create_experiment("batch-segmentation")
    assert run(monitor.main, ["--run", "0123456789abcdef0123456789abcdef"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    assert run(monitor.main, []) == 2
