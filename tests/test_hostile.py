"""Hostile input, all in one place: every fast case of the issue, run through ``ablate``
in-process, exits 2 with one ``error:`` line naming what is wrong, no traceback, in
seconds, before Ray starts, and leaves every file as it was (no stray store, no output
folder, no half-written result).

Cases that need a trained teacher or a real MLflow store live beside the code they test
(a truncated store: test_results.py; a truncated checkpoint found by a resumed run:
test_loop.py; a second `ablate run` of one plan: test_plan.py)."""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from orchestrator import cli, ray_session, tracking

REPO = Path(__file__).resolve().parent.parent
LSG = str(REPO / "ablations" / "lsg.yaml")
GARBAGE = bytes(range(256)) * 16  # not UTF-8 from byte 128 on
SECONDS_PER_CASE = 20  # each takes well under a second to a few (torch's import); bounded
MAX_LINE_CHARS = cli.MAX_ERROR_CHARS + 20  # "error: " and the cut's ellipsis


@dataclass
class Case:
    """One invocation: ``argv`` and ``env`` with ``{tmp}`` for the case's folder; the
    error line must contain every string in ``named`` (``{tmp}`` filled in too)."""

    id: str
    argv: list[str]
    named: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # relative path -> content (or a function that makes it, for contents that cost time)
    files: dict[str, Any] = field(default_factory=dict)


# File contents that are not contents: a named pipe made in the file's place (reading it
# would block), and a sparse file of that many bytes (reading it whole would take minutes).
FIFO = "\0fifo"


def _sparse(size: int) -> str:
    return f"\0sparse:{size}"


def _plan(body: str) -> dict[str, str]:
    return {"plan.yaml": "name: h\n" + body}


BILLION_LAUGHS = "name: h\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
TRIALS_100K = ("axes:\n  kappa: " + str([k + 0.5 for k in range(1000)]) + "\nseeds: "
               + str(list(range(100))) + "\n")

_RECORD = {"format_version": 1, "step": 2, "tensors": "state-00000002.safetensors",
           "config": {"teacher": "embedded:smoke"}}


def _checkpoint(tensors: bytes, record) -> dict[str, bytes | str]:
    return {"run/checkpoint/state-00000002.safetensors": tensors,
            "run/checkpoint/state.json": json.dumps(record)}


def _foreign_db() -> bytes:
    """An SQLite database that is not an MLflow store (MLflow would write its schema in)."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "other.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE notes (text)")
        return path.read_bytes()


@functools.cache
def _mlflow_store() -> bytes:
    """A real MLflow store holding one experiment and no plan's runs (made once, when the
    first case that needs it runs)."""
    import tempfile

    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{path}").create_experiment("ablate/other")
        return path.read_bytes()


RUN = [
    # The plan file itself.
    Case("plan: binary", ["run", "{tmp}/plan.yaml"], ["{tmp}/plan.yaml", "not UTF-8 text"],
         files={"plan.yaml": GARBAGE}),
    Case("plan: empty", ["run", "{tmp}/plan.yaml"], ["{tmp}/plan.yaml", "mapping"],
         files={"plan.yaml": ""}),
    Case("plan: a folder (unreadable as a file)", ["run", "{tmp}"], ["{tmp}", "is a folder"]),
    Case("plan: billion laughs", ["run", "{tmp}/plan.yaml"], ["aliases"],
         files={"plan.yaml": BILLION_LAUGHS}),
    Case("plan: 100,000 trials", ["run", "{tmp}/plan.yaml"], ["100,000 trials", "--max-trials"],
         files=_plan(TRIALS_100K)),
    Case("plan: axes twice", ["run", "{tmp}/plan.yaml"], ["duplicate key 'axes'"],
         files=_plan("axes: {kappa: [1.0]}\naxes: {kappa: [2.0]}\n")),
    Case("plan: base.kappa twice", ["run", "{tmp}/plan.yaml"], ["duplicate key 'kappa'"],
         files=_plan("base:\n  kappa: 1.0\n  kappa: 2.0\n")),
    # Values a trial would only fail on inside Ray.
    Case("plan: seed 2^64", ["run", "{tmp}/plan.yaml"], ["seeds"],
         files=_plan(f"seeds: [{2**64}]\n")),
    Case("plan: adam_beta1 5", ["run", "{tmp}/plan.yaml"], ["adam_beta1"],
         files=_plan("base: {adam_beta1: 5}\n")),
    Case("plan: lr_generator .inf", ["run", "{tmp}/plan.yaml"], ["lr_generator"],
         files=_plan("base: {lr_generator: .inf}\n")),
    Case("plan: kappa .inf", ["run", "{tmp}/plan.yaml"], ["kappa"],
         files=_plan("base: {kappa: .inf}\n")),
    Case("plan: gpu .nan", ["run", "{tmp}/plan.yaml"], ["gpu"],
         files=_plan("resources: {gpu: .nan}\n")),
    Case("plan: 300-character name", ["run", "{tmp}/plan.yaml"], ["name"],
         files={"plan.yaml": "name: " + "x" * 300 + "\n"}),
    Case("plan: eval_num_images 1", ["run", "{tmp}/plan.yaml"], ["eval_num_images"],
         files=_plan("evaluation: {eval_num_images: 1}\n")),
    Case("plan: eval_num_images 10^12", ["run", "{tmp}/plan.yaml"], ["eval_num_images"],
         files=_plan("evaluation: {eval_num_images: 1000000000000}\n")),
    # Valid numbers FID cannot use: no more images than the metric's feature dimensions.
    Case("plan: --size smoke without sizes.smoke (the preset's 16 images, 32 dimensions)",
         ["run", "{tmp}/plan.yaml", "--size", "smoke"],
         ["{tmp}/plan.yaml", "eval_num_images = 16", "32-dimensional",
          "sizes: {smoke: {eval_num_images: 64}}"], files=_plan("")),
    Case("plan: eval_num_images 64 at the default size (64 dimensions)",
         ["run", "{tmp}/plan.yaml"], ["eval_num_images = 64", "64-dimensional"],
         files=_plan("evaluation: {eval_num_images: 64}\n")),
    # Files the plan names (the default size: smoke would swap in the embedded teacher).
    Case("plan: missing teacher folder", ["run", "{tmp}/plan.yaml"],
         ["{tmp}/plan.yaml: teacher = '{tmp}/no-teacher'", "does not exist"],
         files=_plan("base: {teacher: '{tmp}/no-teacher'}\nseeds: [0]\n")),
    Case("plan: missing prompts file", ["run", "{tmp}/plan.yaml"],
         ["{tmp}/plan.yaml: prompts = '{tmp}/no-prompts.txt': file not found"],
         files=_plan("base: {prompts: '{tmp}/no-prompts.txt'}\nseeds: [0]\n")),
    Case("plan: binary prompts file", ["run", "{tmp}/plan.yaml"],
         ["{tmp}/plan.yaml: prompts = '{tmp}/p.txt'", "not UTF-8 text"],
         files={**_plan("base: {prompts: '{tmp}/p.txt'}\nseeds: [0]\n"), "p.txt": GARBAGE}),
    Case("plan: empty prompts file", ["run", "{tmp}/plan.yaml"],
         ["{tmp}/plan.yaml: prompts = '{tmp}/p.txt'", "holds no prompts"],
         files={**_plan("base: {prompts: '{tmp}/p.txt'}\nseeds: [0]\n"), "p.txt": "\n \n"}),
    # YAML that parses but is not the shape of a plan (issue: hardening by class).
    Case("plan: a boolean key at the top", ["run", "{tmp}/plan.yaml"],
         ["{tmp}/plan.yaml", "key True", "keys are names"], files=_plan("yes: 1\n")),
    Case("plan: an integer key in resources", ["run", "{tmp}/plan.yaml"],
         ["key 3 at resources"], files=_plan("resources: {3: 1}\n")),
    Case("plan: a null key in base", ["run", "{tmp}/plan.yaml"], ["key None at base"],
         files=_plan("base: {~: 2.0}\n")),
    Case("plan: 50,000 nested lists", ["run", "{tmp}/plan.yaml"],
         ["{tmp}/plan.yaml", "nested deeper"], files=_plan("axes: " + "[" * 50000 + "]" * 50000)),
    Case("plan: 30 nested mappings", ["run", "{tmp}/plan.yaml"],
         ["nested deeper than 16 levels"], files=_plan("base: " + "{a: " * 30 + "1" + "}" * 30)),
    Case("plan: a 400-digit kappa", ["run", "{tmp}/plan.yaml"], ["kappa", "400 digits"],
         files=_plan("base: {kappa: " + "4" * 400 + "}\n")),
    Case("plan: a 5,000-digit seed", ["run", "{tmp}/plan.yaml"],
         ["{tmp}/plan.yaml", "cannot be read"], files=_plan("seeds: [" + "5" * 5000 + "]\n")),
    Case("plan: a 100,000-character description", ["run", "{tmp}/plan.yaml"],
         ["description", "100,000 characters"],
         files=_plan("description: " + "d" * 100_000 + "\n")),
    # Special files where a file is expected: refused before they are opened.
    Case("plan: a named pipe", ["run", "{tmp}/plan.yaml"], ["{tmp}/plan.yaml", "named pipe"],
         files={"plan.yaml": FIFO}),
    Case("plan: /dev/zero", ["run", "/dev/zero"], ["/dev/zero", "character device"]),
    Case("plan: prompts from /dev/urandom", ["run", "{tmp}/plan.yaml"],
         ["prompts = '/dev/urandom'", "character device"],
         files=_plan("base: {prompts: /dev/urandom}\nseeds: [0]\n")),
    Case("plan: prompts from a named pipe", ["run", "{tmp}/plan.yaml"],
         ["prompts = '{tmp}/p.txt'", "named pipe"],
         files={**_plan("base: {prompts: '{tmp}/p.txt'}\nseeds: [0]\n"), "p.txt": FIFO}),
    Case("plan: a 2 GB sparse prompts file", ["run", "{tmp}/plan.yaml"],
         ["prompts = '{tmp}/p.txt'", "2,147,483,648 bytes"],
         files={**_plan("base: {prompts: '{tmp}/p.txt'}\nseeds: [0]\n"),
                "p.txt": _sparse(2 << 30)}),
    # compare: what the verdict compares, checked with the plan (issue: verdicts).
    Case("compare: an axis the plan does not have", ["run", "{tmp}/plan.yaml"],
         ["compare.arms", "'alpha' is not an axis"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {arms: [alpha]}\n")),
    Case("compare: an unknown metric", ["run", "{tmp}/plan.yaml"],
         ["compare.metrics", "unknown metric 'fidd'"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {metrics: [fidd]}\n")),
    Case("compare: a reference not among the axis's values", ["run", "{tmp}/plan.yaml"],
         ["compare.reference.strategy", "'none' is not among the axis's values (lsg, cfg)"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {reference: {strategy: none}}\n")),
    Case("compare: delta zero", ["run", "{tmp}/plan.yaml"],
         ["compare.delta.clip", "finite number > 0, got 0"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {delta: {clip: 0}}\n")),
    Case("compare: delta negative", ["run", "{tmp}/plan.yaml"],
         ["compare.delta.fid", "finite number > 0, got -0.1"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {delta: {fid: -0.1}}\n")),
    Case("compare: delta not a number", ["run", "{tmp}/plan.yaml"],
         ["compare.delta.fid", "finite number > 0, got 'small'"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {delta: {fid: small}}\n")),
    Case("compare: delta not a number (bool)", ["run", "{tmp}/plan.yaml"],
         ["compare.delta.adherence", "got True"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {delta: {adherence: yes}}\n")),
    Case("compare: delta of a metric not compared", ["run", "{tmp}/plan.yaml"],
         ["compare.delta.adherence", "not one of compare.metrics"],
         files=_plan("axes: {strategy: [lsg, cfg]}\n"
                     "compare: {metrics: [fid], delta: {adherence: 0.03}}\n")),
    Case("compare: unknown key", ["run", "{tmp}/plan.yaml"],
         ["compare.refrence", "unknown key"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {refrence: lsg}\n")),
    Case("compare: paired not a boolean", ["run", "{tmp}/plan.yaml"],
         ["compare.paired", "true or false"],
         files=_plan("axes: {strategy: [lsg, cfg]}\ncompare: {paired: maybe}\n")),
    # compare.trend: the sweep's dose-response question (issue 32), checked with the plan.
    Case("compare.trend: an axis that is not numeric", ["run", "{tmp}/plan.yaml"],
         ["compare.trend.axis", "'strategy' is not numeric"],
         files=_plan("axes: {strategy: [lsg, cfg], kappa: [1.0, 2.0, 3.0]}\n"
                     "compare: {trend: strategy}\n")),
    Case("compare.trend: an axis of two values", ["run", "{tmp}/plan.yaml"],
         ["compare.trend.axis", "'kappa' has 2 distinct values", "at least 3"],
         files=_plan("axes: {kappa: [1.0, 2.0]}\ncompare: {trend: {axis: kappa}}\n")),
    Case("compare.trend: delta zero", ["run", "{tmp}/plan.yaml"],
         ["compare.trend.delta.clip", "finite number > 0", "got 0"],
         files=_plan("axes: {kappa: [1.0, 2.0, 3.0]}\n"
                     "compare: {trend: {axis: kappa, delta: {clip: 0}}}\n")),
    Case("compare.trend: delta negative", ["run", "{tmp}/plan.yaml"],
         ["compare.trend.delta.fid", "got -0.1"],
         files=_plan("axes: {kappa: [1.0, 2.0, 3.0]}\n"
                     "compare: {trend: {axis: kappa, delta: {fid: -0.1}}}\n")),
    Case("compare.trend: an unknown model", ["run", "{tmp}/plan.yaml"],
         ["compare.trend.model", "line, quadratic"],
         files=_plan("axes: {kappa: [1.0, 2.0, 3.0]}\n"
                     "compare: {trend: {axis: kappa, model: cubic}}\n")),
    Case("plan: prompts file is a folder", ["run", "{tmp}/plan.yaml"],
         ["prompts = '{tmp}'", "is a folder"],
         files=_plan("base: {prompts: '{tmp}'}\nseeds: [0]\n")),
    # The environment and the flags around the plan.
    Case("profiles file: binary", ["run", LSG, "--profile", "sd15"],
         ["{tmp}/profiles.yaml", "not UTF-8 text"],
         env={"ABLATE_PROFILES": "{tmp}/profiles.yaml"}, files={"profiles.yaml": GARBAGE}),
    Case("--storage: a file", ["run", LSG, "--size", "smoke", "--storage", "{tmp}/f"],
         ["--storage={tmp}/f", "is a file"], files={"f": "x"}),
    Case("MLFLOW_TRACKING_URI: sqlite in a missing folder", ["run", LSG, "--size", "smoke"],
         ["{tmp}/nowhere", "does not exist"],
         env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/nowhere/mlflow.db"}),
    Case("MLFLOW_TRACKING_URI: sqlite in a file's place", ["run", LSG, "--size", "smoke"],
         ["{tmp}/f", "does not exist"],
         env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/f/mlflow.db"}, files={"f": "x"}),
    # /proc takes no new file, even from root (to whom os.access answers yes); Linux only.
    *[Case("MLFLOW_TRACKING_URI: sqlite in an unwritable folder", ["run", LSG, "--size", "smoke"],
         ["the folder /proc is not writable"],
         env={"MLFLOW_TRACKING_URI": "sqlite:////proc/mlflow.db"})] * Path("/proc").is_dir(),
    Case("MLFLOW_TRACKING_URI: an ftp:// store", ["run", LSG, "--size", "smoke"],
         ["MLFLOW_TRACKING_URI=ftp://{tmp}/store", "not a tracking store"],
         env={"MLFLOW_TRACKING_URI": "ftp://{tmp}/store"}),
    Case("RAY_ADDRESS: nothing listening", ["run", LSG, "--size", "smoke"],
         ["RAY_ADDRESS=127.0.0.1:9", "no Ray cluster answers"],
         env={"RAY_ADDRESS": "127.0.0.1:9"}),
]

EVAL = [
    Case("eval: --num-images 10^12", ["eval", "--teacher", "embedded:smoke", "--num-images",
                                      "1000000000000"], ["--num-images 1000000000000"]),
    Case("eval: --steps 0", ["eval", "--teacher", "embedded:smoke", "--steps", "0"],
         ["--steps 0"]),
    Case("eval: --guidance-scale nan", ["eval", "--teacher", "embedded:smoke",
                                        "--guidance-scale", "nan"], ["--guidance-scale nan"]),
    # Refused before a cache folder is made under the output folder.
    Case("eval: --teacher of an unknown embedded size", ["eval", "--teacher", "embedded:huge"],
         ["--teacher embedded:huge", "unknown embedded size"]),
    Case("eval: --teacher a missing folder", ["eval", "--teacher", "{tmp}/no-model"],
         ["--teacher {tmp}/no-model", "no such model folder"]),
    # Arguments that used to fail only after minutes of evaluation.
    Case("eval: --grid a folder", ["eval", "--teacher", "embedded:smoke", "--grid", "{tmp}"],
         ["--grid {tmp}", ".png"]),
    Case("eval: --grid in a missing folder", ["eval", "--teacher", "embedded:smoke", "--grid",
                                              "{tmp}/no/such/g.png"],
         ["--grid {tmp}/no/such/g.png", "cannot write in {tmp}/no/such"]),
    Case("eval: --seed 2^70", ["eval", "--teacher", "embedded:smoke", "--seed", str(2 ** 70)],
         [f"--seed {2 ** 70}", "0..2^63-1"]),
    Case("eval: empty .safetensors", ["eval", "--checkpoint", "{tmp}/run"],
         ["{tmp}/run/checkpoint", "state-00000002.safetensors unreadable"],
         files=_checkpoint(b"", _RECORD)),
    Case("eval: random-bytes .safetensors", ["eval", "--checkpoint", "{tmp}/run"],
         ["{tmp}/run/checkpoint", "state-00000002.safetensors unreadable"],
         files=_checkpoint(os.urandom(4096), _RECORD)),
    Case("eval: truncated .safetensors", ["eval", "--checkpoint", "{tmp}/run"],
         ["is 100 bytes, not the 4,096 written (truncated)"],
         files=_checkpoint(GARBAGE[:100], {**_RECORD, "tensors_bytes": 4096})),
    Case("eval: state.json is []", ["eval", "--checkpoint", "{tmp}/run"],
         ["state.json is not a checkpoint record"], files=_checkpoint(b"", [])),
    Case("eval: state.json without config", ["eval", "--checkpoint", "{tmp}/run"],
         ["state.json is not a checkpoint record", "config"],
         files=_checkpoint(b"", {k: v for k, v in _RECORD.items() if k != "config"})),
]

TABLES = [
    Case("tables: 0-byte mlflow.db", ["tables"], ["{tmp}/home/mlflow.db is empty"],
         env={"ABLATE_HOME": "{tmp}/home"}, files={"home/mlflow.db": b""}),
    Case("tables: random-bytes mlflow.db", ["tables"], ["not an SQLite database"],
         env={"ABLATE_HOME": "{tmp}/home"}, files={"home/mlflow.db": GARBAGE}),
    Case("tables: an SQLite file that is no MLflow store", ["tables"],
         ["not an MLflow store"], env={"ABLATE_HOME": "{tmp}/home"},
         files={"home/mlflow.db": _foreign_db()}),
    Case("tables: sqlite in a missing folder", ["tables"], ["no MLflow store at {tmp}/nowhere"],
         env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/nowhere/mlflow.db"}),
    # A real store: the refusal comes before any report folder is made.
    Case("tables: a plan the store has no runs of", ["tables", "--plan", "nosuch"],
         ["nosuch"], env={"ABLATE_HOME": "{tmp}/home"},
         files={"home/mlflow.db": _mlflow_store}),
    Case("tables: a parent run the store does not have",
         ["tables", "--parent-run", "0123456789abcdef0123456789abcdef"],
         ["no run '0123456789abcdef0123456789abcdef'"], env={"ABLATE_HOME": "{tmp}/home"},
         files={"home/mlflow.db": _mlflow_store}),
    Case("tables: --out under a file", ["tables", "--out", "{tmp}/f/tables"],
         ["cannot create the report folder {tmp}/f/tables", "{tmp}/f is not a folder"],
         env={"ABLATE_HOME": "{tmp}/home"},
         files={"home/mlflow.db": _mlflow_store, "f": "x"}),
    # The user's own retry settings (minutes of them) do not delay the answer.
    Case("tables: --tracking-uri on a closed port",
         ["tables", "--tracking-uri", "http://127.0.0.1:9"],
         ["no MLflow tracking server answers at http://127.0.0.1:9"],
         env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7",
              "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}),
]

MLFLOW_UI = [
    Case("mlflow-ui: --port 70000", ["mlflow-ui", "--port", "70000"], ["--port 70000"]),
    Case("mlflow-ui: --port 0", ["mlflow-ui", "--port", "0"], ["--port 0"]),
    Case("mlflow-ui: no store", ["mlflow-ui"], ["no MLflow store at {tmp}/home/mlflow.db"],
         env={"ABLATE_HOME": "{tmp}/home"}),
    Case("mlflow-ui: 0-byte store", ["mlflow-ui"], ["is empty"],
         env={"ABLATE_HOME": "{tmp}/home"}, files={"home/mlflow.db": b""}),
    Case("mlflow-ui: an SQLite file that is no MLflow store", ["mlflow-ui"],
         ["not an MLflow store"], env={"ABLATE_HOME": "{tmp}/home"},
         files={"home/mlflow.db": _foreign_db()}),
]

DISTILL = [
    Case("distill: binary config", ["distill", "{tmp}/d.yaml"], ["{tmp}/d.yaml", "not UTF-8"],
         files={"d.yaml": GARBAGE}),
    Case("distill: --workdir a file",
         ["distill", str(REPO / "examples" / "distill-smoke.yaml"), "--workdir", "{tmp}/f"],
         ["--workdir {tmp}/f: is a file"], files={"f": "x"}),
]

CASES = RUN + EVAL + TABLES + MLFLOW_UI + DISTILL
# Set by a run that gets as far as its MLflow check; restored after each case.
_SET_BY_RUNS = (*tracking.HTTP_RETRY_POLICY, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
                "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in root.rglob("*")}


def _run_case(case: Case, tmp: Path, capsys) -> tuple[int, str, float]:
    tmp.mkdir()
    for rel, given in case.files.items():
        content = given() if callable(given) else given
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == FIFO:
            os.mkfifo(path)
        elif isinstance(content, str) and content.startswith("\0sparse:"):
            with path.open("wb") as f:
                f.truncate(int(content.removeprefix("\0sparse:")))
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, tmp))
    before = _tree(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABLATE_HOME", str(tmp / "home"))
        for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "ABLATE_STORAGE", "ABLATE_PROFILES",
                    *_SET_BY_RUNS):
            mp.delenv(key, raising=False)
        for key, value in case.env.items():
            mp.setenv(key, _fill(value, tmp))
        capsys.readouterr()
        started = time.monotonic()
        code = cli.main([_fill(a, tmp) for a in case.argv])
        seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert _tree(tmp) == before, f"{case.id}: files changed or left behind"
    return code, err, seconds


def test_every_hostile_input_exits_2_with_one_error_line(tmp_path, monkeypatch, capsys):
    """The battery: each case exits 2 with one line naming the file or variable, no
    traceback, within seconds, Ray never started, nothing written."""
    started_ray = []
    monkeypatch.setattr(ray_session, "start_ray", lambda *a, **k: started_ray.append(1))
    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("the MLflow server was started"))
    failures, timings = [], {}
    for number, case in enumerate(CASES):
        tmp = tmp_path / f"case{number}"
        try:
            code, err, timings[case.id] = _run_case(case, tmp, capsys)
        except AssertionError as exc:
            failures.append(str(exc))
            continue
        line = err.rstrip("\n")
        problems = [what for what, bad in (
            (f"exit {code}", code != 2),
            ("not one line", err.count("\n") != 1),
            ("no 'error: ' prefix", not err.startswith("error: ")),
            ("a traceback", "Traceback" in err),
            (f"a line of {len(line)} characters", len(line) > MAX_LINE_CHARS),
            (f"{timings[case.id]:.1f} s", timings[case.id] > SECONDS_PER_CASE),
            ("Ray started", bool(started_ray)),
        ) if bad]
        problems += [f"no {_fill(n, tmp)!r}" for n in case.named if _fill(n, tmp) not in line]
        if problems:
            failures.append(f"{case.id}: {', '.join(problems)}: {err[:500]!r}")
    assert not failures, "\n".join(failures)
    slowest = max(timings, key=timings.get)
    print(f"{len(CASES)} hostile inputs, each exit 2 with one error line "
          f"(slowest: {slowest}, {timings[slowest]:.1f} s)")
    assert len(CASES) >= 48  # a case dropped from the lists is a case no longer proved
