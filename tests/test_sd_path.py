"""The sd15 code path end to end on CPU, inside Ray Tune, on 2 data-parallel workers.

A tiny randomly initialised SD-format directory with a VAE (built here, offline) stands
in for Stable Diffusion 1.5; the sd15 profile is read from a profiles.yaml; the plan runs
through the preflight, Ray Tune, a Ray Train TorchTrainer of 2 gloo workers, the latent
one-step generator, VAE decoding and the evaluation suite (the profile's caption file
and reference image folder; ``metrics: embedded`` scores with the shipped embedded CLIP,
because Inception and ViT-g-14 are neither here nor runnable on this CPU).
"""

from __future__ import annotations

import io
import json
import textwrap

import pytest
from test_teacher import _tiny_sd_directory

from distill import checkpoint, world
from orchestrator import runner, tracking
from results import schema

# Ray, end-to-end plans or minutes of compute: `make test` runs them, `make test-fast` does not.
pytestmark = pytest.mark.slow

EVAL_IMAGES = 72  # FID needs more images than the embedded CLIP's 64 feature dimensions

PLAN = f"""\
    name: sdpath
    base: {{strategy: lsg, kappa: 2.0}}
    seeds: [0]
    resources: {{cpu: 1}}
    evaluation: {{teacher_baseline: off}}
    sizes:
      smoke: {{iterations: 2, log_every: 1, checkpoint_every: 2,
              eval_num_images: {EVAL_IMAGES}}}
"""


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory):
    from evaluation.fid import write_image_folder

    root = tmp_path_factory.mktemp("sd15")
    teacher = _tiny_sd_directory(root)
    captions = [c.text for c in world.all_captions()][:EVAL_IMAGES]
    (root / "prompts.txt").write_text("\n".join(c.text for c in world.train_captions()) + "\n")
    (root / "captions.txt").write_text("\n".join(captions) + "\n")
    write_image_folder(world.render_batch([world.parse_caption(c) for c in captions],
                                          list(range(EVAL_IMAGES)), 16), root / "reference")
    (root / "profiles.yaml").write_text(textwrap.dedent(f"""\
        sd15:
          teacher: {teacher}
          prompts: {root / 'prompts.txt'}
          captions: {root / 'captions.txt'}
          reference: {root / 'reference'}
          metrics: embedded
          workers: 2
        """))
    plan = root / "sdpath.yaml"
    plan.write_text(textwrap.dedent(PLAN))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ABLATE_HOME", str(tmp_path_factory.getbasetemp() / "ablate-home"))
        mp.setenv("ABLATE_PROFILES", str(root / "profiles.yaml"))
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("ABLATE_STORAGE", raising=False)
        mp.setenv("ABLATE_STORAGE", str(root / "storage"))
        out = io.StringIO()
        outcome = runner.run_plan(plan, size="smoke", profile="sd15", out=out)
        yield {"outcome": outcome, "out": out.getvalue(), "teacher": teacher, "root": root,
               "client": tracking.client(tracking.tracking_uri())}


def test_sd15_trial_finishes_on_two_workers_inside_tune(sd_run):
    outcome = sd_run["outcome"]
    assert outcome.exit_code == 0, sd_run["out"]
    assert list(outcome.trial_status.values()) == ["finished"]
    trial_dir = next((sd_run["root"] / "storage" / "trials" / "sdpath").iterdir())
    record = json.loads((trial_dir / "result.json").read_text())
    assert record["iterations"] == 2
    # The profile pinned its teacher and the paper's SD settings under the plan.
    assert record["config"]["teacher"] == str(sd_run["teacher"])
    assert (record["config"]["lr_generator"], record["config"]["t_init"]) == (1e-6, 625)
    # The generator is a latent-space UNet (4 channels in and out) like the teacher.
    tensors, meta = checkpoint.load(trial_dir / "checkpoint")
    assert meta["step"] == 2
    assert tensors["generator.conv_in.weight"].shape[1] == 4
    assert tensors["generator.conv_out.weight"].shape[0] == 4
    # Ray Train ran the workers, under this trial's workdir on the shared storage.
    assert any((trial_dir / "ray-train").rglob("*"))


def test_decoded_samples_are_evaluated_and_the_protocol_is_recorded(sd_run):
    client = sd_run["client"]
    experiment = client.get_experiment_by_name(schema.EXPERIMENT_PREFIX + "sdpath")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{schema.ROLE}` = 'trial'")
    assert len(runs) == 1
    params, metrics, tags = runs[0].data.params, runs[0].data.metrics, runs[0].data.tags
    protocol = tags[schema.EVAL_PROTOCOL]
    assert protocol.startswith(f"sd15-{EVAL_IMAGES}-embedded-clip-")
    assert params["eval_protocol"] == protocol
    assert params["eval_num_images"] == str(EVAL_IMAGES)
    assert (params["workers"], params["profile"]) == ("2", "sd15")
    # FID (key carries the count) and CLIP score on VAE-decoded 16x16 images, logged once
    # (by rank 0 only) at the last step.
    assert metrics[f"fid{EVAL_IMAGES}"] > 0 and -1 <= metrics["clip_score"] <= 1
    history = client.get_metric_history(runs[0].info.run_id, "loss_generator")
    assert sorted(m.step for m in history) == [1, 2]
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "samples")]
    assert schema.GRID_FINAL in artifacts
