"""Compare the runs of an MLflow experiment in the DeepLab paper's ablation form.

    python pipelines/compare.py --experiment deeplab-synthetic [--format md|csv|html] [--out table.md]

One row per training run, grouped by dataset (VOC, Cityscapes, PASCAL-Context, ... as the paper's
tables): model, backbone, LargeFOV, ASPP, MSC, pretrained init, augmentation, LR policy,
iterations, and mIoU before / after the CRF (from `evaluate.py`; the training's own val
mIoU when the run was not evaluated). Works on the embedded sqlite store and on a tracking server
(MLFLOW_TRACKING_URI). The table (md, csv, html) and a bar chart are logged as artifacts of a
summary run in the same experiment (tagged deeplab.kind=comparison, never listed itself). The table
goes to stdout (or --out); the last stdout line is a JSON summary.
"""
from __future__ import annotations

import argparse
import csv
import html
import io
import os
import tempfile
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines import tracking  # noqa: E402
from pipelines.cli import emit_summary, log, output, run  # noqa: E402

COLUMNS = ["dataset", "run", "model", "backbone", "LargeFOV", "ASPP", "MSC", "pretrained", "augmentation", "LR policy",
           "iterations", "mIoU", "mIoU + CRF"]
ASPP = {"aspp_s": "ASPP-S", "aspp_l": "ASPP-L"}


def model_columns(name: str) -> dict:
    """deeplabv2_resnet101_aspp_l -> backbone resnet101, ASPP-L; deeplabv3plus_* -> ASPP (v3+); fcn8s_vgg16."""
    parts = name.split("_")
    family, backbone = parts[0], parts[1] if len(parts) > 1 else ""
    head = "_".join(parts[2:])
    aspp = ASPP.get(head) or {"deeplabv3": "ASPP (v3)", "deeplabv3plus": "ASPP (v3+)"}.get(family, "")
    return {"model": family, "backbone": backbone, "LargeFOV": "yes" if head == "largefov" else "",
            "ASPP": aspp}


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def run_row(r) -> dict:
    p, m = r.data.params, r.data.metrics
    scale, flip = p.get("data.scale_range", ""), p.get("data.flip", "")
    augmentation = ", ".join(x for x in (f"scale {scale}" if scale not in ("", "[1.0, 1.0]", "(1.0, 1.0)") else "",
                                         "flip" if flip == "True" else "") if x)
    return {"dataset": r.data.tags.get("dataset", ""), "run": r.info.run_name or r.info.run_id,
            **model_columns(p.get("model.name", "?")),
            "MSC": "yes" if p.get("model.msc") == "True" else "",
            "pretrained": "yes" if any(p.get(k) not in (None, "", "None")
                                       for k in ("model.init_weights", "model.init_from")) else "",
            "augmentation": augmentation, "LR policy": p.get("train.lr_policy", ""),
            "iterations": p.get("train.iterations", ""),
            "mIoU": _percent(m.get("eval_miou", m.get("val_miou"))), "mIoU + CRF": _percent(m.get("eval_miou_crf")),
            "run_id": r.info.run_id, "miou": m.get("eval_miou", m.get("val_miou")), "miou_crf": m.get("eval_miou_crf")}


def experiment_rows(experiment: str) -> list[dict]:
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"experiment {experiment!r} not found in {mlflow.get_tracking_uri()}; "
                         f"available: {', '.join(names) or 'none'}")
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    rows = [run_row(r) for r in runs if r.data.tags.get(tracking.KIND_TAG) != "comparison" and "model.name" in r.data.params]
    if not rows:
        raise ValueError(f"experiment {experiment!r} has no training runs to compare")
    return sorted(rows, key=lambda row: row["dataset"])  # stable: by start time within a dataset


def render(rows: list[dict], fmt: str, columns: list[str] = COLUMNS) -> str:
    """The rows as a Markdown, CSV or HTML table of `columns` (also `pipelines.monitor`'s)."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in columns) + "</tr>\n"
                       for r in rows)
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict], path: str) -> str:
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows) + 2), 3.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [100 * (r["miou"] or 0) for r in rows], width=0.4, label="mIoU")
    ax.bar([i + 0.2 for i in x], [100 * (r["miou_crf"] or 0) for r in rows], width=0.4, label="mIoU + CRF")
    ax.set_xticks(list(x), [r["run"] for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("mean IoU (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_comparison(experiment: str, rows: list[dict]) -> str | None:
    try:
        experiment_id = MlflowClient().get_experiment_by_name(experiment).experiment_id
        with mlflow.start_run(experiment_id=experiment_id, run_name="comparison",
                              tags={tracking.KIND_TAG: "comparison"}) as active, tempfile.TemporaryDirectory() as tmp:
            for fmt in ("md", "csv", "html"):
                with open(os.path.join(tmp, f"comparison.{fmt}"), "w") as f:
                    f.write(render(rows, fmt))
            bar_chart(rows, os.path.join(tmp, "comparison.png"))
            mlflow.log_artifacts(tmp)
            mlflow.log_metric("runs_compared", len(rows))
            return active.info.run_id
    except Exception as e:
        warnings.warn(f"MLflow: comparison not logged: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                      RuntimeWarning, stacklevel=2)
        return None


def compare(experiment: str, fmt: str = "md", out: str | None = None, log_run: bool = True) -> dict:
    mlflow.set_tracking_uri(tracking.tracking_uri())
    rows = experiment_rows(experiment)
    run_id = log_comparison(experiment, rows) if log_run else None  # first: MLflow may print a run link
    table = render(rows, fmt)
    if out:
        with open(out, "w") as f:
            f.write(table)
    else:
        output(table)
    return {"experiment": experiment, "runs": len(rows), "comparison_run_id": run_id,
            "rows": [{k: r[k] for k in ("run", "run_id", "miou", "miou_crf")} for r in rows]}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--format", choices=["md", "csv", "html"], default="md", help="table format (default md)")
    p.add_argument("--out", help="write the table to this file instead of stdout")
    p.add_argument("--no-log", action="store_true", help="do not log the table as an MLflow summary run")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = compare(args.experiment, args.format, args.out, not args.no_log)
    log(f"compare: {summary['runs']} runs of {args.experiment}")
    emit_summary(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
