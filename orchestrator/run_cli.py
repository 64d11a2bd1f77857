"""Subcommands of the orchestrator: ``ablate run PLAN`` and ``ablate mlflow-ui``.

Registering stays cheap (no ray/torch/mlflow imports) so ``ablate --help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestrator.profiles import PROFILE_NAMES as PROFILES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run an ablation plan (ablations/*.yaml) with Ray Tune, logging to MLflow",
        description=(
            "Expand a plan file into trials, run the unfinished ones with Ray Tune and log "
            "each as an MLflow child run under one parent run per invocation. Re-running the "
            "same command continues an interrupted plan: finished trials are skipped, "
            "unfinished ones resume from their checkpoints, and the interrupted parent and "
            "child runs are reused. A bad plan exits 2 naming the file and key before Ray "
            "starts."),
        epilog=(
            "Environment: RAY_ADDRESS connects to an existing Ray cluster (default: a local "
            "Ray without dashboard). MLFLOW_TRACKING_URI selects the tracking store (default: "
            "SQLite in $ABLATE_HOME/mlflow.db; on a cluster use a tracking server every "
            "worker can reach). A tracking server that stops answering is retried for about "
            "a minute (MLFLOW_HTTP_REQUEST_MAX_RETRIES, _BACKOFF_FACTOR and _TIMEOUT change "
            "that, for the driver and every trial); if it stays away the run exits 1 and the "
            "same command resumes it. ABLATE_STORAGE (or --storage) is where trial workdirs and "
            "checkpoints live; on a cluster it must be a folder every node shares (Ray "
            "requires shared storage for multi-node runs). ABLATE_<PROFILE>_WORKERS (or "
            "`workers:` in the profile file) runs each trial on that many data-parallel "
            "workers (Ray Train), each holding the plan's resources."),
    )
    p.add_argument("plan", help="plan file, e.g. ablations/lsg.yaml (format: ablations/README.md)")
    p.add_argument("--size", default="default", choices=["smoke", "default"],
                   help="'default': the embedded world at full size; 'smoke': the same plan "
                        "scaled down (its time: BENCHMARKS.md)")
    p.add_argument("--profile", default="embedded", choices=PROFILES,
                   help="which world: 'embedded' (CPU, ships with the repository), 'sd15' or "
                        "'sd21base' (Stable Diffusion weights, prompts, COCO captions and "
                        "metric models from local files set in $ABLATE_PROFILES, default "
                        "~/.config/ablate/profiles.yaml, or ABLATE_SD15_* variables; every "
                        "missing file is listed before anything starts, exit 2)")
    p.add_argument("--storage", default=None,
                   help="root folder for trial workdirs, checkpoints and Ray Tune files "
                        "(default: $ABLATE_STORAGE, else the output folder $ABLATE_HOME); "
                        "give a shared folder when trials run on several machines")
    p.add_argument("--seeds", default=None, metavar="0,1,2",
                   help="comma-separated seeds that replace the plan's `seeds:` for this "
                        "run (plans default to 0,1,2); each seed is one more trial per "
                        "configuration, and tables show mean ± 95%% t-interval over them "
                        "(FID: geometric mean [95%% interval]). "
                        "A different seed set is a different set of trials: finished "
                        "trials with the same config and seed are reused")
    p.add_argument("--max-trials", type=int, default=None, metavar="N",
                   help="refuse a plan of more than N trials (default 1000: more is almost "
                        "always a typo in an axis)")
    p.set_defaults(handler=_run)

    ui = sub.add_parser(
        "mlflow-ui",
        help="open the MLflow dashboard on this machine's results (127.0.0.1)",
        description=("Serve the MLflow dashboard for the tracking store `ablate run` writes "
                     "(MLFLOW_TRACKING_URI, else $ABLATE_HOME/mlflow.db), bound to 127.0.0.1."),
    )
    ui.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    ui.add_argument("--tracking-uri", metavar="URI",
                    help="the store to show (default: $MLFLOW_TRACKING_URI, else "
                         "sqlite:///$ABLATE_HOME/mlflow.db); `ablate run` prints its own")
    ui.set_defaults(handler=_mlflow_ui)


def _run(args: argparse.Namespace) -> int:
    from distill.config import ConfigError
    from orchestrator.plan import MAX_TRIALS, parse_seeds
    from orchestrator.runner import run_plan

    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    max_trials = MAX_TRIALS if args.max_trials is None else args.max_trials
    if max_trials < 1:
        raise ConfigError(f"--max-trials {args.max_trials}: must be >= 1")
    return run_plan(args.plan, size=args.size, profile=args.profile, storage=args.storage,
                    seeds=seeds, max_trials=max_trials).exit_code


# Backend stores `mlflow ui --backend-store-uri` reads (SQLAlchemy databases, file stores).
BACKEND_SCHEMES = ("sqlite:///", "postgresql", "mysql", "mssql", "file:")


def _check_port_free(port: int) -> None:
    """A busy port is refused before the server starts: MLflow's server would log the
    failure, retry and exit 0 after ~20 s, leaving the user looking at someone else's page."""
    import socket

    from distill.config import ConfigError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(f"--port {port}: 127.0.0.1:{port} is in use ({exc.strerror}); "
                              "stop what holds it or pick another port with --port") from None


def _mlflow_ui(args: argparse.Namespace) -> int:
    from distill.config import ConfigError
    from results import schema
    from results.load import resolve_tracking_uri

    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: a TCP port is 1..65535")
    given = args.tracking_uri or schema.default_tracking_uri()
    if schema.is_server(given):
        raise ConfigError(f"--tracking-uri {given}: a tracking server is its own dashboard; "
                          "open it in a browser")
    if not given.startswith(BACKEND_SCHEMES) and "://" in given:
        raise ConfigError(f"--tracking-uri {given}: not a store MLflow's dashboard can read; "
                          f"give one of {', '.join(s + '...' for s in BACKEND_SCHEMES)}")
    _check_port_free(args.port)
    # A missing store is refused (exit 2, naming it and the command that creates one):
    # MLflow would create an empty one there and show nothing.
    uri = resolve_tracking_uri(given)
    # One web worker and no background job runner: a dashboard for one person, which on a
    # 2-core machine must not compete with the trials it shows.
    command = [sys.executable, "-m", "mlflow", "ui", "--host", "127.0.0.1",
               "--port", str(args.port), "--workers", "1", "--backend-store-uri", uri]
    store = schema.sqlite_path(uri)
    if store is not None:
        command += ["--default-artifact-root", (store.parent / schema.ARTIFACT_DIR).as_uri()]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow dashboard: http://127.0.0.1:{args.port}  (store: {uri}); Ctrl-C stops it",
          flush=True)
    # Replace this process: Ctrl-C then goes straight to the server.
    os.execve(command[0], command, env)
