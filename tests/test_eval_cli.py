"""The evaluation suite, teacher baseline, sample grids and `ablate eval` / `metric-models`."""

from __future__ import annotations

import json

import pytest
import torch

from distill import world
from evaluation import EvalError, embedded_suite, fid_key, sample_grid, teacher_baseline
from orchestrator.cli import main

NUM_IMAGES = 130  # > 64 feature dimensions; small enough for seconds on 2 cores
ADHERENCE_KEYS = {"colour_acc", "shape_acc", "size_acc", "position_acc", "all_acc",
                  "colour_shape_size_acc",
                  "foreground_area", "background_deviation"}


@pytest.fixture(scope="module")
def suite(home):
    return embedded_suite(NUM_IMAGES)


@pytest.fixture(scope="module")
def smoke_teacher(home):
    from distill.teacher import ensure_teacher, load_teacher

    return load_teacher(ensure_teacher("smoke", progress=False))


def _render_fn(seeds_seen: list[int]):
    def sample_fn(prompts: list[str], seed: int) -> torch.Tensor:
        seeds_seen.append(seed)
        captions = [world.parse_caption(p) for p in prompts]
        return world.render_batch(captions, [seed * 1000 + i for i in range(len(prompts))])

    return sample_fn


def test_suite_scores_the_reference_renders_as_perfect(suite):
    assert len(suite.captions) == NUM_IMAGES
    assert set(suite.captions) == {c.text for c in world.heldout_captions()}
    assert suite.protocol.startswith("embedded-16px-clip-")
    captions, images = world.reference_set(NUM_IMAGES)
    metrics = suite.evaluate(images, [c.text for c in captions])
    assert set(metrics) == {"fid130", "clip_score"} | ADHERENCE_KEYS
    assert metrics["fid130"] == pytest.approx(0.0, abs=1e-6)  # the reference itself
    assert metrics["all_acc"] == 1.0
    assert 0.5 < metrics["clip_score"] <= 1.0


def test_evaluate_sample_fn_batches_with_distinct_seeds(suite):
    seeds: list[int] = []
    suite.sample_batch_size = 50
    try:
        first = suite.evaluate_sample_fn(_render_fn(seeds), seed=3)
        again = suite.evaluate_sample_fn(_render_fn([]), seed=3)
    finally:
        suite.sample_batch_size = 250
    assert seeds == [3 * 1_000_003 + i for i in range(3)]  # 130 prompts in batches of 50
    assert first["all_acc"] == 1.0
    assert 0 < first[fid_key(NUM_IMAGES)] < 50
    assert again == first  # deterministic for a seed


def test_bad_evaluation_input_is_a_clear_error(suite):
    captions, images = world.reference_set(NUM_IMAGES)
    texts = [c.text for c in captions]
    big = torch.nn.functional.interpolate(images, scale_factor=2)
    with pytest.raises(EvalError, match=r"images are 32x32 but protocol .* evaluates 16x16"):
        suite.evaluate(big, texts)
    with pytest.raises(EvalError, match="no captions"):
        suite.evaluate(images, [])
    with pytest.raises(EvalError, match="130 images but 129 captions"):
        suite.evaluate(images, texts[:-1])
    with pytest.raises(EvalError, match=r"expected images as a tensor \(N, 3, H, W\)"):
        suite.evaluate(images[:, :1], texts)
    with pytest.raises(EvalError, match="64 images for 64-dimensional features"):
        suite.evaluate(images[:64], texts[:64])
    with pytest.raises(EvalError, match=r"sample_fn returned \(2, 3, 16, 16\) for 130 prompts"):
        suite.evaluate_sample_fn(lambda prompts, seed: images[:2])


def test_teacher_baseline_is_deterministic_and_matches_the_cli(suite, smoke_teacher, capsys):
    metrics = teacher_baseline(smoke_teacher, suite, num_steps=2, guidance_scale=1.5, seed=0)
    assert set(metrics) == {"fid130", "clip_score"} | ADHERENCE_KEYS
    assert metrics["fid130"] > 1.0  # a 30-step smoke teacher is far from the reference
    assert teacher_baseline(smoke_teacher, suite, 2, 1.5, seed=0) == metrics
    assert main(["eval", "--teacher", "embedded:smoke", "--steps", "2", "--guidance-scale", "1.5",
                 "--num-images", str(NUM_IMAGES), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["protocol"] == suite.protocol
    for key, value in metrics.items():
        assert printed[key] == pytest.approx(value, rel=1e-9)


def test_eval_of_a_generator_checkpoint(home, smoke_teacher, tmp_path, capsys):
    from distill.config import DistillConfig
    from distill.loop import distill

    config = DistillConfig(teacher="embedded:smoke", iterations=1, batch_size=4,
                           micro_batch_size=4, checkpoint_every=0)
    distill(config, tmp_path / "run", teacher=smoke_teacher)
    grid = tmp_path / "grid.png"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--num-images",
                 str(NUM_IMAGES), "--grid", str(grid)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"evaluated generator {tmp_path / 'run' / 'checkpoint'} (step 1")
    values = dict(line.split(" ", 1) for line in lines[2:])
    assert set(values) == {"fid130", "clip_score"} | ADHERENCE_KEYS
    assert float(values["fid130"]) > 0
    from PIL import Image

    with Image.open(grid) as image:  # 16 prompts of the 24 held-out ones, 8 columns
        assert image.height == 16 * (64 + 2) + 2


def test_sample_grid_layout(tmp_path):
    from PIL import Image

    captions = world.heldout_captions()[:3] * 2
    images = world.render_batch(captions, list(range(6)))
    path = sample_grid(images, [c.text for c in captions], tmp_path / "g.png", columns=4)
    with Image.open(path) as grid:
        pixels = grid.convert("RGB")
        assert grid.height == 3 * (64 + 2) + 2  # one row per prompt
        width = grid.width
    # Row 0 holds the two images of prompt 0, each 16x16 upscaled 4x with nearest:
    # the cell's right-most column equals the source image's last column.
    label_width = width - (4 * (64 + 2) + 2)
    cell = [pixels.getpixel((label_width + 2 + 63, 2 + 4 * y)) for y in range(16)]
    expected = world.to_uint8(images[:1])[0][:, 15]
    assert cell == [tuple(int(v) for v in p) for p in expected]
    with pytest.raises(EvalError, match="6 images but 5 captions"):
        sample_grid(images, [c.text for c in captions][:5], tmp_path / "bad.png")


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint here" in err[0] and "nothing" in err[0]
    assert main(["eval", "--teacher", "--real"]) == 2
    assert "--real needs --captions, --reference, --clip-checkpoint" in capsys.readouterr().err
    assert main(["eval", "--teacher", "--real", "--captions", str(tmp_path / "c.txt"),
                 "--reference", str(tmp_path / "ref.npz"), "--inception-dir", str(tmp_path),
                 "--clip-checkpoint", str(tmp_path / "vitg.bin")]) == 2
    err = capsys.readouterr().err
    for name in ("c.txt", "ref.npz", "inception-2015-12-05.pt", "vitg.bin"):
        assert f"{name}: missing" in err


def test_metric_models_cli_verifies_the_shipped_clip(capsys):
    from evaluation.clip_model import SHIPPED_CLIP_DIR

    assert main(["metric-models"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(SHIPPED_CLIP_DIR)
    assert out[-2].startswith("weights_hash ")


@pytest.mark.parametrize("args, named", [
    (["--num-images", "1"], "--num-images 1: must be in 2..1,000,000"),
    (["--num-images", "1000000000000"], "--num-images 1000000000000"),
    (["--num-images", "64"], "--num-images 64: FID on 64-dimensional features"),
    (["--real", "--captions", "c", "--reference", "r", "--clip-checkpoint", "k",
      "--num-images", "2048"], "--num-images 2048: FID on 2048-dimensional features"),
    (["--steps", "0"], "--steps 0"),
    (["--guidance-scale", "nan"], "--guidance-scale nan: must be a finite number > 0"),
    (["--guidance-scale", "-1"], "--guidance-scale -1.0"),
])
def test_bad_eval_arguments_exit_2_before_any_work(args, named, capsys):
    assert main(["eval", "--teacher", "embedded:smoke", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and named in err and err.count("\n") == 1, err


def test_a_checkpoint_of_another_architecture_is_one_line(home, smoke_teacher, tmp_path,
                                                          capsys):
    """A smoke generator whose record names the default teacher (as a hand-edited or mixed
    up folder would): one line naming the checkpoint, not torch's size-mismatch pages."""
    from distill.config import DistillConfig
    from distill.inputs import load_config_teacher
    from distill.loop import distill

    config = DistillConfig(teacher="embedded:smoke", iterations=1, batch_size=4,
                           micro_batch_size=4, checkpoint_every=0)
    distill(config, tmp_path / "run", teacher=smoke_teacher)
    record_file = tmp_path / "run" / "checkpoint" / "state.json"
    record = json.loads(record_file.read_text())
    record["config"]["teacher"] = "embedded:default"
    record["teacher_hash"] = load_config_teacher("embedded:default").teacher_hash
    record_file.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(tmp_path / "run" / "checkpoint") in err and "does not fit" in err
