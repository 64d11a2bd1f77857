"""Benchmark of `ablate tables` on a full-size κ sweep read from a real SQLite store.

Shape: 3 strategies x 6 κ x 3 seeds = 54 trial runs plus the teacher baseline, each
with final metrics, a 20-point loss curve and a 128x256 ``samples/grid_final.png``
(the scale of `make sweep-kappa` crossed with the strategy axis). Target: the report
is written and printed within seconds, so `make tables` is never the slow step.

    .venv/bin/python -m benchmarks.bench_results

Prints a Markdown fragment (a section of BENCHMARKS.md). Uses a temporary
ABLATE_HOME; nothing is left behind.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STRATEGIES = ("lsg", "cfg", "none")
KAPPAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
SEEDS = (0, 1, 2)


def build_store(root: Path) -> tuple[str, int]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from PIL import Image

    from results import schema

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment(schema.EXPERIMENT_PREFIX + "kappa",
                                   artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, tags={schema.ROLE: "parent", schema.PLAN: "kappa"})
    parent_id = parent.info.run_id
    rng = np.random.default_rng(0)
    grid = root / "grid_final.png"
    Image.fromarray(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8)).save(grid)
    runs = 0
    for strategy in STRATEGIES:
        for kappa in KAPPAS:
            for seed in SEEDS:
                run = client.create_run(exp, run_name=f"{strategy},{kappa},{seed}", tags={
                    "mlflow.parentRunId": parent_id, schema.ROLE: "trial",
                    schema.STATUS: "finished", schema.EVAL_PROTOCOL: "embedded-16px-clip"})
                metrics = [Metric("loss_generator", float(rng.normal()), 0, step)
                           for step in range(0, 200, 10)]
                metrics += [Metric("fid2k", 10 + 3 * kappa + float(rng.normal()), 0, 200),
                            Metric("clip_score", 0.25 + 0.02 * kappa, 0, 200),
                            Metric("colour_shape_size_acc", min(1.0, 0.3 + 0.2 * kappa), 0, 200)]
                params = {"strategy": strategy, "kappa": kappa, "seed": seed,
                          "iterations": 200, "teacher": "embedded:default"}
                client.log_batch(run.info.run_id, metrics=metrics,
                                 params=[Param(k, str(v)) for k, v in params.items()],
                                 tags=[RunTag(schema.TRIAL_ID, run.info.run_name)])
                client.log_artifact(run.info.run_id, str(grid), "samples")
                client.set_terminated(run.info.run_id)
                runs += 1
    teacher = client.create_run(exp, run_name="teacher", tags={
        "mlflow.parentRunId": parent_id, schema.ROLE: "teacher", schema.STATUS: "finished"})
    client.log_batch(teacher.info.run_id,
                     metrics=[Metric("fid2k", 6.0, 0, 0), Metric("clip_score", 0.31, 0, 0)],
                     params=[Param("sampler", "ddim"), Param("sampler_steps", "25"),
                             Param("kappa", "2.0")])
    client.set_terminated(teacher.info.run_id)
    client.set_terminated(parent_id)
    return uri, runs + 1


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        root = Path(tmp)
        os.environ["ABLATE_HOME"] = str(root)
        (uri, n_runs), t_build = _timed(build_store, root)

        from results import load_runs, write_report
        from results.plots import sweep_figure, tradeoff_figure
        from results.tables import build_table, to_latex, to_markdown

        runs, t_load = _timed(load_runs, "kappa", uri)
        table, t_table = _timed(build_table, "kappa", runs)
        _, t_render = _timed(lambda: (to_latex(table), to_markdown(table)))
        _, t_kappa = _timed(sweep_figure, runs, table.verdict)
        _, t_trade = _timed(tradeoff_figure, runs)
        report, t_report = _timed(write_report, "kappa", root / "out", uri)

        env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "tables", "--plan", "kappa"],
                       env=env, check=True, capture_output=True)
        t_cli = time.perf_counter() - start

    print(f"### results: `ablate tables` ({platform.machine()}, {os.cpu_count()} cores; "
          "other jobs shared the machine)\n")
    print(f"Store: {n_runs} runs (3 strategies x 6 κ x 3 seeds + teacher), each with a "
          f"20-point curve and a grid artifact; building it took {t_build:.1f} s.\n")
    print("| step | seconds |\n|---|---:|")
    for name, seconds in [("load_runs (MLflow search, 55 runs)", t_load),
                          ("build_table (aggregate, Welch, layout)", t_table),
                          ("render LaTeX + Markdown", t_render),
                          ("metrics-vs-κ figure (build)", t_kappa),
                          ("trade-off figure (build)", t_trade),
                          ((f"write_report (all of it, {len(report.figures)} figure files, "
                           "18 grid downloads, logged to MLflow)"), t_report),
                          ("`ablate tables --plan kappa` (new process, imports included)",
                           t_cli)]:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
