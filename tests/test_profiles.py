"""Profiles and the preflight: SD settings from one file or the environment, the paper's
defaults under the plan, and every missing file listed (exit 2, in seconds) before anything
starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distill.config import SIZE_PRESETS, ConfigError, DistillConfig
from orchestrator import preflight, profiles
from orchestrator.plan import PRECEDENCE, expand, load_plan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith(("ABLATE_SD15_", "ABLATE_SD21BASE_")):
            monkeypatch.delenv(key)
    monkeypatch.delenv(profiles.DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv(profiles.PROFILES_ENV, str(tmp_path / "profiles.yaml"))
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_layout_file_and_environment_in_that_order(env, monkeypatch):
    _write(env / "profiles.yaml", f"""\
        data_root: {env / 'data'}
        sd15:
          teacher: /weights/sd15          # absolute: used as is
          captions: coco/val30k.txt       # relative: under the data root
          workers: 4
          distill: {{iterations: 500}}
        """)
    monkeypatch.setenv("ABLATE_SD15_PROMPTS", "/elsewhere/prompts.txt")
    p = profiles.load_profile("sd15")
    assert p.teacher == "/weights/sd15"
    assert p.captions == str(env / "data" / "coco/val30k.txt")
    assert p.prompts == "/elsewhere/prompts.txt"  # the environment beats the file
    # Untouched fields follow the documented layout under the data root.
    assert p.clip_checkpoint == str(env / "data" / profiles.LAYOUT["shared"]["clip_checkpoint"])
    assert p.inception_dir == str(env / "data" / "metrics")
    assert (p.workers, p.metrics, p.eval_num_images) == (4, "paper", 30000)
    defaults = dict(p.distill_defaults)
    assert defaults["iterations"] == 500 and defaults["lr_generator"] == 1e-6
    # sd21base reads its own section and its own teacher folder of the layout.
    assert profiles.load_profile("sd21base").teacher == str(env / "data"
                                                            / "stable-diffusion-2-1-base")
    # The profile travels to Ray workers as JSON and comes back equal.
    import json

    assert profiles.Profile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


@pytest.mark.parametrize("text, message", [
    ("sd15: {teachr: /x}\n", "unknown key(s) sd15.teachr"),
    ("sd51: {}\n", "unknown key(s) sd51"),
    ("sd15: {distill: {lr: 1.0}}\n", "unknown key(s) sd15.distill.lr"),
    ("sd15: {workers: two}\n", "sd15.workers"),
    ("sd15: {metrics: fast}\n", "sd15.metrics = 'fast'"),
    ("sd15: {teacher: 3}\n", "sd15.teacher must be a path"),
])
def test_bad_profile_file_names_file_and_key(env, text, message):
    _write(env / "profiles.yaml", text)
    with pytest.raises(ConfigError) as err:
        profiles.load_profile("sd15")
    assert message in str(err.value) and str(env / "profiles.yaml") in str(err.value)


def test_paper_defaults_sit_under_the_plan_and_the_profile_pins_its_world(env):
    _write(env / "profiles.yaml", f"data_root: {env / 'data'}\n")
    plan = load_plan(REPO / "ablations" / "lsg.yaml")
    p = profiles.load_profile("sd15")
    trials = expand(plan, "default", p)
    for trial in trials:
        c = trial.config
        assert (c.teacher, c.prompts) == (p.teacher, p.prompts)
        assert (c.t_init, c.alpha, c.lr_generator, c.lr_fake_score) == (625, 1.0, 1e-6, 1e-6)
        assert (c.adam_beta1, c.adam_beta2, c.batch_size, c.precision) == (0.0, 0.999, 512, "fp32")
        assert c.eval_num_images == 30000 and c.kappa == 2.0  # the plan's base still wins
    assert [t.config.strategy for t in trials] == [s for s in ("lsg", "cfg", "none")
                                                   for _ in range(3)]
    # The embedded budget is DistillConfig's, so the paper's length reaches SD runs.
    assert {t.config.iterations for t in trials} == {20000}
    # Smoke scales the same SD plan down: the size preset beats the profile's defaults,
    # the teacher stays the profile's.
    smoke = expand(plan, "smoke", p)
    assert smoke[0].config.batch_size == SIZE_PRESETS["smoke"]["batch_size"] != 512
    assert smoke[0].config.teacher == p.teacher
    assert smoke[0].config.eval_num_images == 64
    # Trial ids follow the resolved config: never shared with the embedded world's.
    embedded = expand(plan, "default")
    assert expand(plan, "default", profiles.load_profile("embedded")) == embedded
    assert not {t.trial_id for t in trials} & {t.trial_id for t in embedded}


def test_preflight_lists_every_missing_file(env):
    _write(env / "profiles.yaml", f"data_root: {env / 'data'}\n")
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check(profiles.load_profile("sd15"))
    message = str(err.value)
    data = env / "data"
    for path in (data / "stable-diffusion-v1-5", data / "prompts/aesthetics_6plus.txt",
                 data / "coco2014/captions_val2014_30k.txt",
                 data / "coco2014/val2014_clean_fid_256.npz",
                 data / "metrics/inception-2015-12-05.pt",
                 data / "metrics/open_clip_vit_g14_laion2b_s12b_b42k.bin"):
        assert str(path) in message, path
    assert "6 required file(s) missing" in message
    for hint in ("ABLATE_SD15_TEACHER", "ABLATE_SD15_CLIP_CHECKPOINT", "ViT-g-14",
                 "Aesthetics", "COCO-2014", "clean-fid"):
        assert hint in message

    # Provide all but the CLIP checkpoint and a short caption file: exactly those remain.
    (data / "prompts").mkdir(parents=True)
    (data / "prompts/aesthetics_6plus.txt").write_text("a cat\n")
    (data / "coco2014").mkdir()
    (data / "coco2014/captions_val2014_30k.txt").write_text("a dog\n" * 10)
    (data / "coco2014/val2014_clean_fid_256.npz").write_bytes(b"x")
    (data / "metrics").mkdir()
    (data / "metrics/inception-2015-12-05.pt").write_bytes(b"x")
    teacher = data / "stable-diffusion-v1-5"
    for rel in ("model_index.json", "unet/config.json",
                "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                "text_encoder/model.safetensors", "tokenizer/vocab.json",
                "scheduler/scheduler_config.json", "vae/config.json"):
        (teacher / rel).parent.mkdir(parents=True, exist_ok=True)
        (teacher / rel).write_text("{}")
    problems = preflight.missing_files(profiles.load_profile("sd15"), eval_num_images=30000)
    assert [(m.field, m.path.name) for m in problems] == [
        ("teacher", "stable-diffusion-v1-5"),  # no VAE weights: it cannot decode latents
        ("captions", "captions_val2014_30k.txt"),
        ("clip_checkpoint", "open_clip_vit_g14_laion2b_s12b_b42k.bin")]
    assert "vae/diffusion_pytorch_model.safetensors" in problems[0].what
    assert "only 10 non-empty lines" in problems[1].what
    assert preflight.missing_files(profiles.load_profile("embedded")) == []


def test_ablate_run_without_weights_exits_2_in_seconds(env):
    """`ablate run ablations/lsg.yaml --profile sd15` on a machine without the weights.

    HF_HUB_OFFLINE=1 and no network: nothing may try a hub (open_clip and diffusers would
    retry for most of a minute on a missing name); the preflight answers first."""
    (env / "profiles.yaml").write_text("sd15: {workers: 2}\n")
    run_env = {**os.environ, "ABLATE_DATA": str(env / "nothing-here"), "HF_HUB_OFFLINE": "1",
               "ABLATE_HOME": str(env / "home")}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", "ablations/lsg.yaml",
         "--profile", "sd15"], cwd=REPO, env=run_env, capture_output=True, text=True, check=False,
        timeout=120)
    seconds = time.perf_counter() - started
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("stable-diffusion-v1-5", "aesthetics_6plus.txt", "captions_val2014_30k.txt",
                 "inception-2015-12-05.pt", "open_clip_vit_g14_laion2b_s12b_b42k.bin"):
        assert name in proc.stderr
    assert not (env / "home" / "mlflow.db").exists()  # nothing started
    # Python start-up plus the plan check; a hub retry loop alone takes tens of seconds.
    assert seconds < 20, f"took {seconds:.1f} s"


def _layered_plan(tmp_path) -> Path:
    """Each key set by exactly the layers named in its value, so the winner is readable."""
    path = tmp_path / "layers.yaml"
    _write(path, """\
        name: layers
        base: {lr_fake_score: 0.3, t_init: 300, iterations: 7, alpha: 0.3}
        axes: {alpha: [0.8]}
        seeds: [0]
        evaluation: {eval_every: 4, eval_num_images: 40}
        sizes:
          smoke: {t_init: 700}
        """)
    return path


def test_precedence_each_layer_beats_the_ones_below_it(tmp_path):
    """ablations/README.md, "Precedence": one key per boundary between two layers."""
    profile = profiles.Profile(
        name="sd15", settings="test", teacher="/sd/teacher", prompts="/sd/prompts.txt",
        eval_num_images=30000,
        distill_defaults=(("lr_generator", 2e-6), ("lr_fake_score", 2e-6), ("alpha", 0.2)))
    plan = load_plan(_layered_plan(tmp_path))
    c = expand(plan, "default", profile)[0].config
    assert c.adam_eps == DistillConfig.adam_eps  # 1: defaults, where no layer sets it
    assert c.lr_generator == 2e-6  # 2 over 1: profile training defaults
    assert c.lr_fake_score == 0.3  # 3 over 2: base
    assert c.eval_every == 4  # 4: evaluation
    assert c.eval_num_images == 30000  # 5 over 4: the profile's evaluation size
    assert c.alpha == 0.8  # 8 over 3 and 2: the axis
    assert (c.teacher, c.prompts) == ("/sd/teacher", "/sd/prompts.txt")  # 9: the profile
    smoke = expand(plan, "smoke", profile)[0].config
    assert smoke.batch_size == SIZE_PRESETS["smoke"]["batch_size"]  # 6: the size preset
    assert smoke.iterations == SIZE_PRESETS["smoke"]["iterations"]  # 6 over 3
    assert smoke.eval_num_images == SIZE_PRESETS["smoke"]["eval_num_images"]  # 6 over 5
    assert smoke.t_init == 700  # 7 over 3: the plan's sizes.smoke
    assert (smoke.teacher, smoke.prompts) == ("/sd/teacher", "/sd/prompts.txt")  # 9 over 6
    # Under the embedded profile, layers 2, 5 and 9 add nothing.
    embedded = expand(plan, "default")[0].config
    assert (embedded.lr_generator, embedded.eval_num_images) == (DistillConfig.lr_generator, 40)
    assert embedded.teacher == DistillConfig.teacher


def test_precedence_is_written_once_in_the_plan_readme():
    """The README's numbered list is the order the code applies (orchestrator.plan)."""
    text = (REPO / "ablations" / "README.md").read_text()
    section = text.split("## Precedence", 1)[1].split("\n## ", 1)[0]
    items = [line.split(". ", 1)[1] for line in section.splitlines()
             if line[:1].isdigit() and ". " in line]
    assert len(items) == len(PRECEDENCE)
    for item, layer in zip(items, PRECEDENCE):
        assert item.replace("`", "").startswith(layer), (item, layer)
