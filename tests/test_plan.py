"""Plans: checked loading, pure expansion, and bad plans rejected (exit 2) before Ray starts."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from distill.config import SIZE_PRESETS, ConfigError, DistillConfig, trial_id
from orchestrator import cli
from orchestrator.plan import (
    DEFAULT_SEEDS,
    expand,
    load_plan,
    parse_seeds,
    plan_from_dict,
    trial_set_hash,
    with_seeds,
)

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """\
    name: t
    base: {kappa: 1.5}
    axes:
      strategy: [lsg, cfg]
    seeds: [0, 1]
    sizes:
      smoke: {teacher: "embedded:smoke", iterations: 4}
"""


def test_shipped_plans_expand_to_the_issue_counts():
    lsg = load_plan(REPO / "ablations/lsg.yaml")
    kappa = load_plan(REPO / "ablations/kappa.yaml")
    for size in ("smoke", "default"):
        # Three seeds by default: 9 trials and 18 trials, seeds varying fastest.
        trials = expand(lsg, size)
        assert [(t.config.strategy, t.config.seed) for t in trials] == [
            (s, seed) for s in ("lsg", "cfg", "none") for seed in (0, 1, 2)]
        assert len({t.config.kappa for t in trials}) == 1
        trials = expand(kappa, size)
        assert [(t.config.kappa, t.config.seed) for t in trials] == [
            (k, seed) for k in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0) for seed in (0, 1, 2)]
        assert {t.config.strategy for t in trials} == {"lsg"}
    assert [t.name for t in expand(kappa, "smoke")][:4] == [
        "strategy=lsg,kappa=0.5,seed=0", "strategy=lsg,kappa=0.5,seed=1",
        "strategy=lsg,kappa=0.5,seed=2", "strategy=lsg,kappa=1,seed=0"]
    assert expand(lsg, "smoke")[0].config.teacher == "embedded:smoke"


def test_kappa_plan_is_one_line_away_from_crossing_with_strategy(tmp_path):
    text = (REPO / "ablations/kappa.yaml").read_text()
    line = "  # strategy: [lsg, cfg, none]"
    assert line in text.splitlines()
    crossed = write(tmp_path, text.replace(line, line.replace("# ", "")), "kappa.yaml")
    trials = expand(load_plan(crossed), "default")
    assert len(trials) == 6 * 3 * 3  # κ x strategy x seeds
    assert len({t.trial_id for t in trials}) == 54


def test_expand_counts_product_zip_and_seeds(tmp_path):
    plan = load_plan(write(tmp_path, """\
        name: z
        axes:
          strategy: [lsg, none]
        zip:
          - {kappa: [1.0, 2.0, 3.0], lr_generator: [1.0e-4, 2.0e-4, 3.0e-4]}
        seeds: [0, 1]
    """))
    trials = expand(plan, "default")
    assert len(trials) == 2 * 3 * 2  # product of axes x zip group x seeds, not 2*3*3*2
    # File order: first axis slowest, seeds fastest.
    assert [(t.config.strategy, t.config.kappa, t.config.seed) for t in trials[:3]] == [
        ("lsg", 1.0, 0), ("lsg", 1.0, 1), ("lsg", 2.0, 0)]
    # Zipped values move together.
    assert {(t.config.kappa, t.config.lr_generator) for t in trials} == {
        (1.0, 1e-4), (2.0, 2e-4), (3.0, 3e-4)}
    assert trials[0].name == "strategy=lsg,kappa=1,lr_generator=0.0001,seed=0"


def test_trial_ids_are_stable_hashes_of_the_resolved_config(tmp_path):
    plan = load_plan(write(tmp_path, MINIMAL))
    first, again = expand(plan, "smoke"), expand(load_plan(write(tmp_path, MINIMAL)), "smoke")
    assert [t.trial_id for t in first] == [t.trial_id for t in again]
    for t in first:
        assert t.trial_id == trial_id(t.config)
    # Key order in the file does not matter; a value that changes the result does.
    reordered = write(tmp_path, MINIMAL.replace("base: {kappa: 1.5}", "base: {kappa: 1.5}\n"
                                                "    description: x"), "r.yaml")
    assert [t.trial_id for t in expand(load_plan(reordered), "smoke")] == [
        t.trial_id for t in first]
    changed = write(tmp_path, MINIMAL.replace("kappa: 1.5", "kappa: 1.25"), "c.yaml")
    assert not {t.trial_id for t in expand(load_plan(changed), "smoke")} & {
        t.trial_id for t in first}
    # Sizes resolve to different configs, hence ids.
    assert not {t.trial_id for t in expand(plan, "default")} & {t.trial_id for t in first}
    assert trial_set_hash(first) == trial_set_hash(list(reversed(first)))


def test_resolution_order_base_then_size_then_axes(tmp_path):
    plan = load_plan(write(tmp_path, """\
        name: order
        base: {iterations: 100, kappa: 1.5, lr_generator: 1.0e-3}
        axes: {lr_generator: [2.0e-3]}
        evaluation: {eval_every: 50, eval_num_images: 500}
        seeds: [0]
        sizes:
          smoke: {iterations: 6, eval_num_images: 8}
    """))
    smoke, = expand(plan, "smoke")
    default, = expand(plan, "default")
    assert (smoke.config.iterations, smoke.config.eval_num_images) == (6, 8)
    assert (default.config.iterations, default.config.eval_num_images) == (100, 500)
    assert smoke.config.lr_generator == default.config.lr_generator == 2e-3
    assert smoke.config.eval_every == 50 and smoke.config.kappa == 1.5
    # Smoke differs from default exactly by the core's preset and the plan's overrides.
    assert dataclasses.replace(default.config, **{**SIZE_PRESETS["smoke"], "iterations": 6,
                                                  "eval_num_images": 8}) == smoke.config


def test_plan_sections_are_typed_and_frozen(tmp_path):
    plan = load_plan(write(tmp_path, """\
        name: r
        resources: {cpu: 2, gpu: 0.25}
        evaluation: {teacher_baseline: off}
        max_failures: 3
    """))
    assert plan.resources.cpu == 2 and plan.resources.gpu == 0.25
    assert plan.evaluation.teacher_baseline is None and plan.max_failures == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.resources.cpu = 4  # type: ignore[misc]
    trials = expand(plan, "default")
    assert [t.config for t in trials] == [DistillConfig(seed=s) for s in DEFAULT_SEEDS]
    assert [t.name for t in trials] == [f"strategy=lsg,kappa=2,seed={s}" for s in (0, 1, 2)]


BAD_PLANS = [
    # (what, plan text or None for a missing file, key the message must name)
    ("unknown top-level key", "name: b\naxis: {kappa: [1.0]}\n", "axis"),
    ("unknown base key", "name: b\nbase: {kapa: 2.0}\n", "base.kapa"),
    ("unknown axis key", "name: b\naxes: {guidance: [1.0]}\n", "axes.guidance"),
    ("wrong type in base", "name: b\nbase: {iterations: many}\n", "iterations"),
    ("wrong type in axis", "name: b\naxes: {kappa: [1.0, two]}\n", "axes.kappa"),
    ("empty axis", "name: b\naxes: {kappa: []}\n", "axes.kappa"),
    ("axis not a list", "name: b\naxes: {kappa: 2.0}\n", "axes.kappa"),
    ("duplicate axis values", "name: b\naxes: {kappa: [1.0, 2, 2.0]}\n", "axes.kappa"),
    ("kappa <= 0", "name: b\naxes: {kappa: [1.0, 0.0]}\n", "axes.kappa"),
    ("negative kappa in base", "name: b\nbase: {kappa: -1.0}\n", "kappa"),
    ("unknown strategy", "name: b\naxes: {strategy: [lsg, teacher_only]}\n", "axes.strategy"),
    ("zip lengths differ", "name: b\nzip: [{kappa: [1.0, 2.0], seed_x: [1]}]\n", "zip[0]"),
    ("zip lengths differ (known keys)",
     "name: b\nzip: [{kappa: [1.0, 2.0], lr_generator: [0.1]}]\n", "zip[0]"),
    ("seed as an axis", "name: b\naxes: {seed: [0, 1]}\n", "axes.seed"),
    ("negative seed", "name: b\nseeds: [0, -1]\n", "seeds"),
    ("duplicate seeds", "name: b\nseeds: [0, 0]\n", "seeds"),
    ("seed beyond 64 bits", "name: b\nseeds: [18446744073709551616]\n", "seeds"),
    ("fractional multi-GPU", "name: b\nresources: {gpu: 1.5}\n", "gpu"),
    ("zero CPUs", "name: b\nresources: {cpu: 0}\n", "cpu"),
    ("unknown resources key", "name: b\nresources: {memory: 4}\n", "resources.memory"),
    ("unknown size", "name: b\nsizes: {huge: {}}\n", "sizes.huge"),
    ("bad size override", "name: b\nsizes: {smoke: {batch_size: 0}}\n", "batch_size"),
    ("bad teacher baseline", "name: b\nevaluation: {teacher_baseline: {steps: 0}}\n",
     "steps"),
    ("bad eval key", "name: b\nevaluation: {eval_images: 5}\n", "evaluation.eval_images"),
    ("missing name", "axes: {kappa: [1.0]}\n", "name"),
    ("bad YAML", "name: b\naxes: {kappa: [1.0\n", "YAML"),
    ("not a mapping", "- a\n- b\n", "mapping"),
    ("missing file", None, "file not found"),
    ("resources exceeding the machine", "name: b\nresources: {cpu: 4096}\n", "resources.cpu"),
    # Hostile or mistyped input, refused before Ray starts, in bounded time and memory.
    ("axes written twice (the last would win)",
     "name: b\naxes: {kappa: [1.0]}\naxes: {kappa: [2.0, 3.0]}\n", "duplicate key 'axes'"),
    ("a base key written twice", "name: b\nbase:\n  kappa: 1.0\n  kappa: 2.0\n",
     "duplicate key 'kappa'"),
    ("YAML alias bomb", ("name: b\na: &a [x, x, x, x, x, x, x, x, x]\n"
                         "b: &b [*a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b]\n"), "aliases"),
    ("infinite kappa", "name: b\nbase: {kappa: .inf}\n", "kappa"),
    ("infinite learning rate", "name: b\nbase: {lr_generator: .inf}\n", "lr_generator"),
    ("NaN learning rate in an axis", "name: b\naxes: {lr_fake_score: [1.0e-4, .nan]}\n",
     "lr_fake_score"),
    ("Adam beta outside [0, 1)", "name: b\nbase: {adam_beta1: 5}\n", "adam_beta1"),
    ("NaN GPUs", "name: b\nresources: {gpu: .nan}\n", "gpu"),
    ("a 300-character plan name", "name: " + "x" * 300 + "\n", "name"),
    ("one evaluation image", "name: b\nevaluation: {eval_num_images: 1}\n", "eval_num_images"),
    ("10^12 evaluation images", "name: b\nevaluation: {eval_num_images: 1000000000000}\n",
     "eval_num_images"),
    ("100,000 trials", "name: b\naxes:\n  kappa: " + str(list(range(1, 1001))) + "\nseeds: "
     + str(list(range(100))) + "\n", "100,000 trials"),
]


@pytest.mark.parametrize("what,text,key", BAD_PLANS, ids=[b[0] for b in BAD_PLANS])
def test_bad_plan_exits_2_naming_file_and_key(what, text, key, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # A bad plan must be refused before Ray: starting it fails the test. (Checking
    # ray.is_initialized() would depend on test order: other modules share one Ray session.)
    from orchestrator import ray_session

    monkeypatch.setattr(ray_session, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    code = cli.main(["run", str(path), "--size", "smoke"])
    err = capsys.readouterr().err
    assert code == 2, what
    assert str(path) in err and key in err, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    # Nothing ran: no trial folder.
    assert not (tmp_path / "home" / "trials").exists()


def test_unreachable_tracking_uri_exits_2_before_any_trial(tmp_path, monkeypatch, capsys):
    """A tracking server that does not answer is refused by one probe before Ray starts,
    not after MLflow's retries (tests/test_cluster.py covers a server lost mid-run)."""
    import time

    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused
    started = time.monotonic()
    code = cli.main(["run", str(REPO / "ablations/lsg.yaml"), "--size", "smoke"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - started < 30
    from orchestrator.ray_session import ray_temp_dir

    assert not ray_temp_dir().exists()  # no local Ray was started
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:9" in err and "unreachable" in err
    assert not (tmp_path / "home" / "trials").exists()


def test_unknown_profile_exits_2_naming_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", str(REPO / "ablations/lsg.yaml"), "--profile", "sdxl"])
    assert exit_info.value.code == 2
    assert "embedded" in capsys.readouterr().err


def test_plan_from_dict_reports_its_source():
    with pytest.raises(ConfigError, match=r"^my-source: axes.kappa: is empty"):
        plan_from_dict({"name": "x", "axes": {"kappa": []}}, "my-source")


def test_seeds_flag_parses_and_replaces_the_plans_seeds():
    assert parse_seeds("0,1,2,3,4") == (0, 1, 2, 3, 4)
    assert parse_seeds(" 7 , 3") == (7, 3)
    plan = with_seeds(load_plan(REPO / "ablations/lsg.yaml"), parse_seeds("3,4"))
    trials = expand(plan, "smoke")
    assert [(t.config.strategy, t.config.seed) for t in trials] == [
        (s, seed) for s in ("lsg", "cfg", "none") for seed in (3, 4)]
    # The same config and seed is the same trial, whichever way the seed was chosen.
    default = {t.name: t.trial_id for t in expand(load_plan(REPO / "ablations/lsg.yaml"), "smoke")}
    assert all(t.trial_id != default.get(t.name) for t in trials)  # seeds 3, 4: new trials
    again = expand(with_seeds(load_plan(REPO / "ablations/lsg.yaml"), (0, 1)), "smoke")
    assert all(t.trial_id == default[t.name] for t in again)


@pytest.mark.parametrize("value, named", [
    ("0,x,2", "'x' is not an integer"), ("1.5", "'1.5' is not an integer"),
    ("0,-1", "-1"), ("0,1,1", "duplicate value 1"), ("", "'' is not an integer"),
    ("0,,1", "'' is not an integer"), (str(2**64), str(2**64)),
])
def test_bad_seeds_flag_exits_2_naming_the_value(value, named, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    from orchestrator import ray_session

    monkeypatch.setattr(ray_session, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    code = cli.main(["run", str(REPO / "ablations/lsg.yaml"), "--size", "smoke", "--seeds", value])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --seeds") and named in err and "Traceback" not in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("content, named", [
    (bytes(range(256)) * 8, "not UTF-8 text"),
    (b"# padding\n" * 120_000, "bytes; a config file is at most"),
])
def test_binary_or_oversized_plan_exits_2(content, named, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    path = tmp_path / "plan.yaml"
    path.write_bytes(content)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and named in err and err.count("\n") == 1


def test_unreadable_plan_names_the_fix(tmp_path, monkeypatch, capsys):
    path = tmp_path / "plan.yaml"
    path.write_text("name: b\n")

    # Root reads files whatever their mode, so the refusal the OS gives other users is
    # raised here as the OS would raise it, for this file only.
    opened = Path.open

    def denied(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", denied)
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: permission denied" in err and "chmod u+r" in err


def test_max_trials_flag_raises_the_limit(tmp_path):
    text = "name: b\naxes:\n  kappa: " + str(list(range(1, 41))) + "\nseeds: " + str(
        list(range(30))) + "\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=r"1,200 trials, more than the limit of 1,000; .*"
                                          "--max-trials 1200"):
        load_plan(path)
    assert len(expand(load_plan(path, max_trials=1200), "default")) == 1200
    with pytest.raises(ConfigError, match="1,200 trials"):
        with_seeds(load_plan(path, max_trials=1200), tuple(range(30)), max_trials=1000)


def test_storage_or_workdir_naming_a_file_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    from orchestrator import ray_session

    monkeypatch.setattr(ray_session, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    code = cli.main(["run", str(REPO / "ablations/lsg.yaml"), "--size", "smoke",
                     "--storage", str(a_file)])
    err = capsys.readouterr().err
    assert code == 2 and f"--storage={a_file}: {a_file} is a file, not a folder" in err
    config = write(tmp_path, "teacher: 'embedded:smoke'\n", "distill.yaml")
    assert cli.main(["distill", str(config), "--workdir", str(a_file)]) == 2
    assert f"--workdir {a_file}: is a file" in capsys.readouterr().err


def test_mlflow_ui_refuses_a_missing_store_and_a_bad_port(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"  # not even the folder exists, and none is created
    monkeypatch.setenv("ABLATE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("the server was started"))
    assert cli.main(["mlflow-ui"]) == 2
    err = capsys.readouterr().err
    assert f"no MLflow store at {home / 'mlflow.db'}" in err and "make ablation-lsg" in err
    assert list(tmp_path.iterdir()) == []
    other = tmp_path / "other.db"
    assert cli.main(["mlflow-ui", "--tracking-uri", f"sqlite:///{other}"]) == 2
    assert f"no MLflow store at {other}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["mlflow-ui", "--port", "70000"]) == 2
    assert "--port 70000: a TCP port is 1..65535" in capsys.readouterr().err


def test_mlflow_ui_refuses_a_busy_port_and_unreadable_uris(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setattr("os.execve", lambda *a: pytest.fail("the server was started"))
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        assert cli.main(["mlflow-ui", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--port {port}: 127.0.0.1:{port} is in use" in err
    assert cli.main(["mlflow-ui", "--tracking-uri", "ftp://example.org/store"]) == 2
    assert "not a store MLflow's dashboard can read" in capsys.readouterr().err
    assert cli.main(["mlflow-ui", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert "is its own dashboard" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_mlflow_ui_serves_the_store_with_one_worker_and_no_job_runner(tmp_path, monkeypatch,
                                                                     capsys):
    """The server command, captured instead of exec'd: the given store, its artifacts
    beside it, one web worker, MLflow's background job runner off, the URL printed."""
    import sqlite3

    store = tmp_path / "runs" / "mlflow.db"
    store.parent.mkdir()
    with sqlite3.connect(store) as db:  # MLflow's tables: the store checks pass
        for table in ("alembic_version", "experiments", "runs"):
            db.execute(f"CREATE TABLE {table} (x)")
    started = {}
    monkeypatch.setattr("os.execve", lambda path, argv, env: started.update(argv=argv, env=env))
    assert cli.main(["mlflow-ui", "--tracking-uri", f"sqlite:///{store}", "--port", "5123"]) == 0
    argv = started["argv"]
    assert argv[argv.index("--backend-store-uri") + 1] == f"sqlite:///{store}"
    assert argv[argv.index("--workers") + 1] == "1"
    artifacts = (store.parent / "mlartifacts").as_uri()
    assert argv[argv.index("--default-artifact-root") + 1] == artifacts
    assert started["env"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "http://127.0.0.1:5123" in capsys.readouterr().out


def test_sqlite_store_in_a_missing_folder_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    from orchestrator import ray_session

    # Recorded, not pytest.fail: an error raised beside Ray's start would mask a failure.
    started = []
    monkeypatch.setattr(ray_session, "start_ray", lambda *a, **k: started.append(1))
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    missing = tmp_path / "nowhere" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{missing}")
    code = cli.main(["run", str(REPO / "ablations/lsg.yaml"), "--size", "smoke"])
    err = capsys.readouterr().err
    assert code == 2 and f"the folder {missing.parent} does not exist" in err, err
    assert not started, "Ray was started"
    assert list(tmp_path.iterdir()) == []  # no output folder, store or trial folder


def test_tables_on_a_closed_port_exits_2_at_once(tmp_path, monkeypatch, capsys):
    import time

    monkeypatch.setenv("ABLATE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    started = time.monotonic()
    assert cli.main(["tables", "--tracking-uri", "http://127.0.0.1:9"]) == 2
    assert time.monotonic() - started < 60  # not minutes of retries
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "127.0.0.1:9" in err and "Traceback" not in err


def test_a_second_run_of_the_same_plan_and_folder_is_refused(tmp_path, monkeypatch):
    """While one `ablate run` of a plan holds its trial folder, a second exits 2 naming the
    holder, before Ray starts (two would share a parent run and run each trial twice)."""
    import fcntl
    import io

    from orchestrator import ray_session, runner

    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ABLATE_STORAGE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_session, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    (tmp_path / "home").mkdir()
    with (tmp_path / "home" / ".ablate-run-t.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        with pytest.raises(ConfigError, match=r"another `ablate run` of plan t \(pid 4242\)"):
            runner.run_plan(write(tmp_path, MINIMAL), out=io.StringIO())


def test_a_missing_teacher_or_prompts_file_is_refused_before_ray(tmp_path, monkeypatch):
    """Paths a plan names are checked with the plan's other checks, naming the key."""
    import io

    from orchestrator import ray_session, runner

    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_session, "start_ray", lambda *a, **k: pytest.fail("Ray was started"))
    plan = write(tmp_path, f"""\
        name: paths
        base: {{teacher: {tmp_path / 'no-teacher'}, prompts: {tmp_path / 'no-prompts.txt'}}}
        seeds: [0]
        """)
    with pytest.raises(ConfigError) as err:
        runner.run_plan(plan, size="default", out=io.StringIO())
    message = str(err.value)
    assert "\n" not in message  # one line: `ablate` prints one
    assert message.startswith(f"{plan}: teacher = '{tmp_path / 'no-teacher'}'")
    assert "teacher directory does not exist" in message
    assert f"prompts = '{tmp_path / 'no-prompts.txt'}': file not found" in message


def test_a_huge_axis_is_refused_by_its_trial_count(tmp_path):
    """A typo can make an axis 100,000 values long: the duplicate check is one pass and
    the trial limit answers (under O(n²) this plan took minutes)."""
    kappas = ", ".join(f"{k}.5" for k in range(100_000))
    path = write(tmp_path, f"name: huge\naxes:\n  kappa: [{kappas}]\nseeds: [0]\n")
    with pytest.raises(ConfigError, match="give 100,000 trials, more than the limit of 1,000"):
        load_plan(path)
    with pytest.raises(ConfigError, match=r"axes.kappa: duplicate value 2.0"):
        load_plan(write(tmp_path, "name: dup\naxes:\n  kappa: [1.0, 2, 3, 2.0]\n", "dup.yaml"))


def test_ray_address_with_nothing_listening_is_refused_at_once(monkeypatch):
    """No minutes of Ray's reconnect attempts: a closed port is an error naming the fix."""
    from orchestrator import ray_session

    with pytest.raises(ConfigError, match=r"RAY_ADDRESS=127.0.0.1:9: no Ray cluster answers"):
        ray_session.check_reachable("127.0.0.1:9")
    with pytest.raises(ConfigError, match="expected host:port"):
        ray_session.check_reachable("nonsense")
    ray_session.check_reachable("auto")  # Ray's to resolve
