"""Screenshots of the MLflow dashboard for the README (``make screenshots``).

Serves a finished store with ``mlflow ui`` on 127.0.0.1, opens three pages in headless
Chromium (Debian's ``chromium``) and writes PNGs to ``docs/``: the plan's runs table, the
parent run (the report: description with the verdict and table, per-arm metrics) and one
trial's run (tags, description, cost and system metrics). The server is started here and
stopped here, by its process group; nothing else is touched.

    python -m results.screenshots [--plan lsg] [--tracking-uri URI] [--out docs] [--port 5077]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from results import schema
from results.errors import ResultsError
from results.load import resolve_tracking_uri

SERVER_START_TIMEOUT_S = 120
# Chromium renders the single-page app in virtual time; this much lets its requests finish.
RENDER_BUDGET_MS = 20000
# Tall enough for the parent run's description below its child-run list.
WINDOWS = {"runs": "1600,900", "parent": "1600,2000", "trial": "1600,1600"}


def _wait_for(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ResultsError(f"mlflow ui exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise ResultsError(f"mlflow ui did not answer at {url} within {SERVER_START_TIMEOUT_S} s")


def _pages(uri: str, plan: str) -> dict[str, str]:
    """Screenshot name -> dashboard route, for the plan's latest parent run."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + plan)
    if experiment is None:
        raise ResultsError(f"no plan {plan!r} in {uri}; run it first (`make ablation-lsg`)")
    exp = experiment.experiment_id
    parents = client.search_runs([exp], f"tags.`{schema.ROLE}` = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise ResultsError(f"plan {plan!r} has no parent run in {uri}")
    parent = parents[0].info.run_id
    trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}' and "
                                f"tags.`{schema.ROLE}` = 'trial'",
                                order_by=["attributes.run_name ASC"], max_results=1)
    pages = {"runs": f"#/experiments/{exp}/runs",
             "parent": f"#/experiments/{exp}/runs/{parent}"}
    if trials:
        pages["trial"] = f"#/experiments/{exp}/runs/{trials[0].info.run_id}"
    return pages


def _screenshot(chromium: str, url: str, out: Path, window: str) -> None:
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--window-size={window}",
                    f"--virtual-time-budget={RENDER_BUDGET_MS}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default="lsg")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--port", type=int, default=5077)
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: chromium not found; install Debian's package `chromium`", file=sys.stderr)
        return 2
    try:
        uri = resolve_tracking_uri(args.tracking_uri)
        pages = _pages(uri, args.plan)
    except ResultsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "orchestrator.cli", "mlflow-ui", "--tracking-uri", uri,
               "--port", str(args.port)]
    server = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{args.port}/"
    try:
        _wait_for(base, server)
        args.out.mkdir(parents=True, exist_ok=True)
        for page, route in pages.items():
            out = args.out / f"dashboard-{args.plan}-{page}.png"
            _screenshot(chromium, base + route, out, WINDOWS[page])
            print(out)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server's own process group only
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
