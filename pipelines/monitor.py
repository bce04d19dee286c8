"""How last night went, without labels: a batch segmentation run against earlier nights of its job.

    python -m pipelines.monitor --experiment batch-segmentation            # the latest run vs its last 7
    python -m pipelines.monitor --experiment batch-segmentation --run 3f2a… --reference 9c1d…

Compares a `segment` run's distributions (its distributions.json artifact: class pixel shares, the
share of images each class appears in, the confidence histogram, error rate, images/s) with a
reference: another run, or the previous --window finished runs of the same job (the `--job` that
segment tagged, default the model URI; other jobs in the experiment are never compared), pooled. The
first night of a job has no reference: said, exit 0.

Reports per-class share changes, the Jensen–Shannon divergence of the class shares, the population
stability index of the confidence histogram, error-rate and throughput changes, classes that appeared
or vanished, and settings that differ from the reference (model URI, CRF, scale: drift is then
expected, not a fault). Prints the table, logs report.md, report.html and drift.png in a run tagged
deeplab.kind=monitor, and exits 3 when a threshold is crossed (--max-js, --max-psi, --max-error-rate),
0 within them, 2 when the store cannot be reached or the run does not exist. Last stdout line: JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import mlflow
from mlflow.tracking import MlflowClient

from deeplab_core.monitoring import DEFAULT_THRESHOLDS, Distributions, compare_distributions
from pipelines import tracking
from pipelines.cli import emit_summary, log, output, run
from pipelines.compare import render

COLUMNS = ["class", "share %", "reference %", "change (points)", "in images %", "reference in images %"]
CROSSED = 3


def segment_runs(client: MlflowClient, experiment_id: str, job: str | None = None) -> list:
    """The experiment's finished segment runs (of `job`, when given), newest first."""
    query = f"tags.`{tracking.KIND_TAG}` = 'segment' and attributes.status = 'FINISHED'"
    if job is not None:
        query += f" and tags.`{tracking.JOB_TAG}` = '{job}'"
    return client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1000)


def distributions_of(client: MlflowClient, run) -> Distributions:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, "distributions.json", tmp)
        except Exception:
            raise ValueError(f"run {run.info.run_id} has no distributions.json (a segment run from before "
                             "monitoring?)") from None
        with open(path) as f:
            values = json.load(f)
    values.pop("error_rate", None)
    return Distributions(**values)


def report_rows(report: dict) -> list[dict]:
    return [{"class": c["class"], "share %": f"{100 * c['share']:.2f}", "reference %": f"{100 * c['reference']:.2f}",
             "change (points)": f"{100 * c['change']:+.2f}", "in images %": f"{100 * c['images']:.1f}",
             "reference in images %": f"{100 * c['reference_images']:.1f}"} for c in report["classes"]]


def headline(report: dict, reference: str) -> list[str]:
    ratio = report["throughput_ratio"]
    lines = [f"reference: {reference}",
             f"Jensen–Shannon divergence of the class shares: {report['js_divergence']:.4f} "
             f"(threshold {report['thresholds']['max_js']})",
             f"population stability index of the confidence histogram: {report['psi']:.3f} "
             f"(threshold {report['thresholds']['max_psi']}); mean confidence {report['mean_confidence']:.3f} "
             f"vs {report['reference_mean_confidence']:.3f}",
             f"error rate: {report['error_rate']:.3f} vs {report['reference_error_rate']:.3f} "
             f"(threshold {report['thresholds']['max_error_rate']})",
             f"images/s: {report['images_per_s']:.3f} vs {report['reference_images_per_s']:.3f}"
             + (f" ({ratio:.2f}x)" if ratio else "")]
    if report["appeared"] or report["vanished"]:
        lines.append(f"classes appeared: {', '.join(report['appeared']) or '-'}; vanished: "
                     f"{', '.join(report['vanished']) or '-'}")
    for key, (before, now) in report["settings_changed"].items():
        lines.append(f"note: {key} differs from the reference ({before} -> {now}): drift is expected, not a fault")
    lines += [f"CROSSED: {line}" for line in report["crossed"]] or ["within every threshold"]
    return lines


def log_monitor_run(experiment_id: str, job: str, current, reference, report: dict, text: dict,
                    current_d: Distributions, reference_d: Distributions) -> str:
    from pipelines.reports import distribution_plot

    tags = {tracking.KIND_TAG: "monitor", tracking.JOB_TAG: job, "deeplab.monitored_run": current.info.run_id}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"monitor-{current.info.run_name}", tags=tags) as r:
        mlflow.log_params({"monitored_run": current.info.run_id, "reference": reference,
                           **{k: v for k, v in report["thresholds"].items()}})
        mlflow.log_metrics({"js_divergence": report["js_divergence"], "psi": report["psi"],
                            "error_rate": report["error_rate"], "error_rate_change": report["error_rate_change"],
                            "thresholds_crossed": len(report["crossed"])})
        with tempfile.TemporaryDirectory() as tmp:
            for fmt, body in text.items():
                with open(os.path.join(tmp, f"report.{fmt}"), "w") as f:
                    f.write(body)
            distribution_plot(current_d, os.path.join(tmp, "drift.png"), reference_d)
            mlflow.log_artifacts(tmp)
        return r.info.run_id


def monitor(args) -> tuple[dict, int]:
    uri = tracking.tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a store that is down: said in seconds
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment_by_name(args.experiment)
    except Exception as e:
        raise ValueError(f"tracking store {uri} cannot be reached ({type(e).__name__})") from None
    if experiment is None:
        raise ValueError(f"experiment {args.experiment!r} does not exist in {uri}")
    if args.run == "latest":
        runs = segment_runs(client, experiment.experiment_id)
        if not runs:
            raise ValueError(f"experiment {args.experiment!r} has no finished segment runs")
        current = runs[0]
    else:
        try:
            current = client.get_run(args.run)
        except Exception:
            raise ValueError(f"run {args.run} does not exist in {uri}") from None
    job = current.data.tags.get(tracking.JOB_TAG, current.data.params.get("model_uri", ""))
    if args.reference:
        try:
            references = [client.get_run(args.reference)]
        except Exception:
            raise ValueError(f"reference run {args.reference} does not exist in {uri}") from None
        reference = f"run {args.reference}"
    else:
        references = [r for r in segment_runs(client, experiment.experiment_id, job)
                      if r.info.start_time < current.info.start_time][:args.window]
        reference = f"the {len(references)} previous finished run(s) of job {job}, pooled"
    summary = {"run_id": current.info.run_id, "job": job, "reference_runs": [r.info.run_id for r in references]}
    if not references:
        log(f"monitor: run {current.info.run_id} is the first night of job {job}: nothing to compare it with")
        return {**summary, "crossed": []}, 0
    current_d = distributions_of(client, current)
    reference_d = Distributions.pooled([distributions_of(client, r) for r in references])
    thresholds = {"max_js": args.max_js, "max_psi": args.max_psi, "max_error_rate": args.max_error_rate}
    report = compare_distributions(current_d, reference_d, thresholds)
    rows, lines = report_rows(report), headline(report, reference)
    text = {"md": f"# Monitor: run {current.info.run_name} ({current.info.run_id}), job {job}\n\n"
                  + "".join(f"- {line}\n" for line in lines) + "\n" + render(rows, "md", COLUMNS),
            "html": f"<h1>Monitor: run {current.info.run_name}, job {job}</h1>\n<ul>\n"
                    + "".join(f"<li>{line}</li>\n" for line in lines) + "</ul>\n" + render(rows, "html", COLUMNS)}
    output(render(rows, args.format, COLUMNS) + "\n".join(lines) + "\n")
    monitor_run = None if args.no_log else log_monitor_run(experiment.experiment_id, job, current, reference, report,
                                                           text, current_d, reference_d)
    summary.update({k: report[k] for k in ("js_divergence", "psi", "error_rate", "error_rate_change",
                                           "throughput_ratio", "appeared", "vanished", "crossed")},
                   monitor_run_id=monitor_run)
    return summary, CROSSED if report["crossed"] else 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="monitor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="batch-segmentation", help="MLflow experiment (default %(default)s)")
    p.add_argument("--run", default="latest", help="the segment run to judge: a run id, or latest (default)")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference", metavar="RUN_ID", help="compare with this run")
    ref.add_argument("--window", type=int, default=7, metavar="N",
                     help="compare with the previous N finished runs of the same job, pooled (default %(default)s)")
    for name, value in DEFAULT_THRESHOLDS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=value,
                       help="exit 3 above this (default %(default)s)")
    p.add_argument("--format", choices=["md", "csv", "html"], default="md", help="the printed table's format")
    p.add_argument("--no-log", action="store_true", help="do not log the report as a monitor run")
    args = p.parse_args(argv)
    if args.window < 1:
        p.error(f"--window must be >= 1, got {args.window}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    summary, code = monitor(args)
    emit_summary(summary)
    return code


if __name__ == "__main__":
    raise SystemExit(run(main))
