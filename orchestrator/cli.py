"""``ablate``: the one console script. Subcommands live beside the code they run.

Each package that owns a subcommand exposes ``register(subparsers)`` in its
``cli`` module; registering must stay cheap (no torch/ray imports) so that
``ablate --help`` answers at once. Handlers return an exit code. Expected
failures (bad config, missing files) raise a :class:`distill.errors.UserError` with a
message naming the file and the fix; they print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# (module, why it is separate): the order is the order in --help.
_COMMAND_MODULES = (
    "distill.cli",  # teacher
    "orchestrator.distill_cli",  # distill (core + evaluation)
    "evaluation.cli",  # eval, metric-models
    "orchestrator.run_cli",  # run, mlflow-ui
    "results.cli",  # tables
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ablate",
        description=(
            "Ablation orchestrator for SiD-LSG (one-step distillation of text-to-image "
            "diffusion with long and short guidance). Output goes under $ABLATE_HOME "
            "(default: ./runs)."),
        epilog="Run `ablate COMMAND --help` for each command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


# An error is read by a person: a parser quoting its whole input is cut (a list of missing
# files from the preflight keeps its lines).
MAX_ERROR_CHARS = 1000
MAX_ERROR_LINES = 60


def _readable(message: str) -> str:
    lines = [line if len(line) <= MAX_ERROR_CHARS else line[:MAX_ERROR_CHARS] + "…"
             for line in message.splitlines()[:MAX_ERROR_LINES]]
    if len(message.splitlines()) > MAX_ERROR_LINES:
        lines.append(f"… ({len(message.splitlines()) - MAX_ERROR_LINES} more lines)")
    return "\n".join(lines)


def quiet_libraries() -> None:
    """The terminal holds the project's own lines: transformers' per-file "Loading weights"
    bars and diffusers' advice are off for every command (read when they are imported, so
    set before; a user's own setting wins). Warnings and errors still show."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for library in ("transformers", "diffusers"):  # imported already (a test, a notebook)
        if f"{library}.utils.logging" in sys.modules:
            logging = sys.modules[f"{library}.utils.logging"]
            logging.disable_progress_bar()
            logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from distill.errors import UserError
    from orchestrator.tracking import TrackingLost

    quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except (UserError, FileNotFoundError) as exc:
        print(f"error: {_readable(str(exc))}", file=sys.stderr)
        return 2
    except TrackingLost as exc:  # not the user's input: the run failed, and says how to resume
        print(f"error: {_readable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM under `ablate run`
        import signal

        from orchestrator import interrupts

        signum: int = interrupts.received() or getattr(exc, "signum", None) or signal.SIGINT
        print(f"interrupted ({signal.Signals(signum).name}): stopped; runs left unfinished "
              "are marked KILLED, and the same command resumes them", file=sys.stderr)
        return 128 + signum


def entry() -> None:
    """The ``ablate`` command. After an interrupt the runs are closed and Ray is stopped
    by then, so the process ends at once: a normal interpreter exit would unwind threads
    still inside native code (a teacher baseline mid-sampling), which Ray's terminate
    handler reports as a page of C++ stack trace."""
    code = main()
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
