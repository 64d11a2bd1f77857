"""The teacher: one loading path, deterministic training, cache integrity, clear errors."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill import teacher as teacher_mod
from distill.teacher import TeacherError, ensure_teacher, load_teacher, teacher_config

REPO = Path(__file__).resolve().parent.parent

# One thread, as the session's smoke teacher was trained: a rebuilt teacher is compared
# with it byte for byte.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ABLATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def trained_home(home, smoke_home):
    """An output folder whose cache already holds the smoke teacher (a copy of the one the
    session trained), for tests of what happens to a cached teacher."""
    shutil.copytree(smoke_home / "cache" / "teachers", home / "cache" / "teachers")
    return home


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for sub, name in (("unet", "diffusion_pytorch_model.safetensors"),
                      ("text_encoder", "model.safetensors")):
        for key, value in load_file(directory / sub / name).items():
            out[f"{sub}.{key}"] = value
    return out


def test_same_seed_and_config_give_identical_weights(tmp_path):
    # A third of the smoke teacher's steps: enough for warm-up, EMA and prompt dropout to
    # have drawn their randomness, at a third of the cost (three teachers are trained).
    config = dataclasses.replace(teacher_config("smoke"), train_steps=10)
    teacher_mod.train_embedded(config, tmp_path / "a", progress=False)
    teacher_mod.train_embedded(config, tmp_path / "b", progress=False)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # A different seed really changes them (so the comparison above can fail).
    teacher_mod.train_embedded(dataclasses.replace(config, seed=1), tmp_path / "c", progress=False)
    c = _weights(tmp_path / "c")
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_saved_in_stable_diffusion_layout_and_loads(trained_home):
    directory = ensure_teacher("smoke", progress=False)
    for rel in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                "text_encoder/config.json", "text_encoder/model.safetensors",
                "tokenizer/tokenizer.json", "scheduler/scheduler_config.json", "teacher.json"):
        assert (directory / rel).is_file(), rel
    t = load_teacher(directory)
    sched = t.scheduler.config
    betas = (sched.beta_schedule, sched.beta_start, sched.beta_end)
    assert betas == ("scaled_linear", 0.00085, 0.012)
    assert sched.num_train_timesteps == 1000 and sched.prediction_type == "epsilon"
    # scaled_linear: betas are the squares of a linear ramp of square roots.
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    assert torch.allclose(t.scheduler.betas, betas)
    emb = t.encode_prompts(["a small red circle on the left", ""])
    assert emb.shape[0] == 2 and not torch.equal(emb[0], emb[1])
    assert t.sample_shape == (3, 16, 16) and t.vae is None
    assert not any(p.requires_grad for p in t.unet.parameters())


def test_cache_is_reused(trained_home):
    first = ensure_teacher("smoke", progress=False)
    stamp = (first / "teacher.json").stat().st_mtime_ns
    assert ensure_teacher("smoke", progress=False) == first
    assert (first / "teacher.json").stat().st_mtime_ns == stamp


def test_truncated_weights_are_rebuilt_not_used(trained_home):
    directory = ensure_teacher("smoke", progress=False)
    weights = directory / "unet" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(TeacherError, match="corrupt"):
        load_teacher(directory)
    rebuilt = ensure_teacher("smoke", progress=False)
    assert rebuilt.joinpath("unet/diffusion_pytorch_model.safetensors").read_bytes() == good


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TeacherError, match="does not exist"):
        load_teacher(tmp_path / "nowhere")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    (tmp_path / "half" / "unet" / "config.json").write_text("{}")
    with pytest.raises(TeacherError) as err:
        load_teacher(tmp_path / "half")
    message = str(err.value)
    assert "model_index.json" in message and "text_encoder/config.json" in message
    assert "diffusion_pytorch_model.safetensors" in message and "scheduler" in message


def test_unknown_size_is_a_clear_error():
    with pytest.raises(TeacherError, match="unknown teacher size 'huge'"):
        teacher_config("huge")


def _tiny_sd_directory(root: Path) -> Path:
    """A randomly initialised SD-format directory with a VAE (latent space), built offline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    config = teacher_config("smoke")
    tokenizer, text_encoder, _, scheduler = teacher_mod.build_embedded(config)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
        cross_attention_dim=config.text_hidden_size, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                        sample_size=16)
    directory = root / "tiny-sd"
    teacher_mod.save_embedded(config, tokenizer, text_encoder, unet, scheduler, directory, {})
    vae.save_pretrained(directory / "vae")
    (directory / "teacher.json").unlink()  # real SD directories carry no manifest
    return directory


def test_loads_sd_layout_with_vae(tmp_path):
    t = load_teacher(_tiny_sd_directory(tmp_path))
    assert t.vae is not None and t.sample_shape == (4, 8, 8)
    pixels = t.decode(torch.zeros(2, 4, 8, 8))
    assert pixels.shape == (2, 3, 16, 16)


def _ablate(*args, env=None):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=REPO, check=False,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_prints_directory_last(home):
    result = _ablate("teacher", "--size", "smoke", "--no-progress", env={"ABLATE_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert json.loads((Path(last) / "teacher.json").read_text())["config_hash"]


def test_cli_unwritable_output_folder_exits_2(tmp_path):
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("x")
    result = _ablate("teacher", "--size", "smoke", env={"ABLATE_HOME": str(blocked / "sub")})
    assert result.returncode == 2
    assert "not writable" in result.stderr and "ABLATE_HOME" in result.stderr
    assert "Traceback" not in result.stderr


def test_shipped_default_teacher_loads_and_matches_its_config():
    directory = ensure_teacher("default", progress=False)
    recorded = json.loads((directory / "teacher.json").read_text())
    assert recorded["config_hash"] == teacher_config("default").config_hash()
    assert (directory / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < 6_000_000
