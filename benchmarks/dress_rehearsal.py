"""A full-size dress rehearsal of the sd15 profile with random weights (issue 15).

    python -m benchmarks.dress_rehearsal build ROOT [--tiny]
    python -m benchmarks.dress_rehearsal phases ROOT OUT.jsonl [--images N] [--iterations N]
    python -m benchmarks.dress_rehearsal run ROOT OUT.jsonl [--timeout S]

``build`` writes, under data root ROOT, everything ``--profile sd15`` expects
(orchestrator.profiles.LAYOUT), built locally with nothing downloaded: an SD1.5-architecture
directory (UNet, VAE and CLIP text encoder from their SD1.5 configs, random weights; the
embedded teacher's word-level tokenizer at 77 tokens; SD's scheduler), synthetic prompts
and captions from the embedded world's grammar, synthetic FID statistics, and metric models
of the real architectures with random weights: open_clip ViT-g-14, and clean-fid's Inception
file if this machine has it (/tmp, where clean-fid keeps it), else torchvision's
inception_v3 architecture with random weights saved under clean-fid's file name. Every such
substitution is recorded in ROOT/dress-rehearsal.json. It also writes ROOT/profiles.yaml
(a few iterations per trial, 1000 evaluation images) and ROOT/rehearsal.yaml, a one-trial
copy of ablations/lsg.yaml for a GPU (see :func:`write_plan` for why not the plan itself).
``--tiny`` builds the same layout at tiny widths for CPU; its profile scores with the
embedded CLIP (``metrics: embedded``) on a folder of reference images, because ViT-g-14
and Inception are not runnable on a CPU in a test.

``phases`` times, in this process, each phase of a trial at this size: teacher load, the
step, checkpoint write and read (with its size), metric-model load, generation, VAE decode,
Inception features, CLIP score and the FID; ``run`` runs the rehearsal plan through
``ablate run ... --profile sd15``, SIGKILLs the driver once the first checkpoint is
committed, and runs the same command again, which resumes and evaluates. Both append JSON
lines to OUT with seconds and peak memory.

The numbers these weights produce (FID, CLIP score) mean nothing; only times, memory,
sizes and whether each phase works at this size do.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
MANIFEST = "dress-rehearsal.json"
PROFILES_FILE = "profiles.yaml"
PLAN_FILE = "rehearsal.yaml"
EVAL_IMAGES = 1000
TINY_EVAL_IMAGES = 72  # FID needs more images than the embedded CLIP's 64 feature dimensions
CLEAN_FID_INCEPTION = Path("/tmp/inception-2015-12-05.pt")  # where clean-fid downloads it
CAPTION_LINES = 30000  # the paper's COCO-2014 evaluation size, so its preflight passes too
# Few iterations per trial, a checkpoint at 2 and the final one at 3: the driver is
# killed after the first and the resumed run writes the second.
REHEARSAL_DISTILL = {"iterations": 3, "batch_size": 4, "micro_batch_size": 2, "log_every": 1,
                     "checkpoint_every": 2}
PHASES = ("teacher load", "step", "checkpoint write", "checkpoint read", "metric models load",
          "generation", "VAE decode", "image features", "CLIP score", "FID")


# --------------------------------------------------------------------------- build


def _text_encoder(vocab_size: int, tiny: bool):
    from transformers import CLIPTextConfig, CLIPTextModel

    # bos, eos (= pad) are ids 0 and 1 in the embedded tokenizer.
    if tiny:
        sizes = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "vocab_size": vocab_size}
    else:  # SD1.5's text_encoder/config.json (CLIP ViT-L/14's text tower)
        sizes = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu",
                 "vocab_size": 49408}
    return CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1, **sizes))


def _vae(tiny: bool):
    from diffusers import AutoencoderKL

    if tiny:  # 8x8 latents -> 16x16 pixels
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                             block_out_channels=(8, 16),
                             down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                             sample_size=16)
    # SD1.5's vae/config.json: 64x64x4 latents -> 512x512 pixels.
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
                         norm_num_groups=32, sample_size=512, scaling_factor=0.18215)


def build_teacher(directory: Path, tiny: bool, device: str) -> None:
    """An SD1.5-architecture diffusers directory with random weights (seed 0)."""
    from diffusers import DDPMScheduler

    from benchmarks.gpu_sd15 import sd15_unet
    from distill import teacher as teacher_mod

    torch.manual_seed(0)
    # The embedded tokenizer: a word-level vocabulary of the world's grammar, so the
    # synthetic prompts below tokenise with no BPE files and no download.
    tokenizer = teacher_mod._build_tokenizer(77)
    with torch.device(device):  # random initialisation of 1.1 B parameters is faster there
        unet, vae = sd15_unet(tiny), _vae(tiny)
        text_encoder = _text_encoder(len(tokenizer), tiny)
    # SD1.5's scheduler/scheduler_config.json.
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                              beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
                              clip_sample=False, steps_offset=1)
    if directory.exists():
        shutil.rmtree(directory)
    unet.save_pretrained(directory / "unet")
    vae.save_pretrained(directory / "vae")
    text_encoder.save_pretrained(directory / "text_encoder")
    tokenizer.save_pretrained(directory / "tokenizer")
    scheduler.save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None], "feature_extractor": [None, None],
        "requires_safety_checker": False}, indent=2))


class CleanFidInception(torch.nn.Module):
    """torchvision's inception_v3 in the shape clean-fid's ``InceptionV3W`` calls: a
    ``layers`` module mapping normalised 299x299 images to 2048 pool features."""

    def __init__(self):
        import torchvision

        super().__init__()
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        blocks = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
                  "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a",
                  "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b",
                  "Mixed_7c", "avgpool"]
        self.layers = torch.nn.Sequential(*[getattr(net, b) for b in blocks],
                                          torch.nn.Flatten(1)).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_inception(path: Path) -> str:
    """clean-fid's Inception file at ``path``: the real one if this machine has it."""
    if CLEAN_FID_INCEPTION.is_file():
        shutil.copyfile(CLEAN_FID_INCEPTION, path)
        return f"clean-fid's Inception (copied from {CLEAN_FID_INCEPTION})"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(CleanFidInception()), str(path))
    return ("NOT clean-fid's Inception: torchvision inception_v3 architecture, random weights, "
            "saved under clean-fid's file name")


def build_clip(path: Path, device: str) -> str:
    import open_clip

    from evaluation.clip_score import REAL_CLIP_MODEL

    torch.manual_seed(0)
    model = open_clip.create_model(REAL_CLIP_MODEL, device=device)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
    return f"NOT laion2b_s12b_b42k: open_clip {REAL_CLIP_MODEL} architecture, random weights"


def write_texts(root: Path, layout: dict) -> None:
    """Training prompts and evaluation captions from the embedded world's grammar: every
    word is in the embedded tokenizer's vocabulary."""
    from distill import world

    prompts = root / layout["prompts"]
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(c.text for c in world.train_captions()) + "\n")
    captions = [c.text for c in world.all_captions()]
    lines = [captions[i % len(captions)] for i in range(CAPTION_LINES)]
    path = root / layout["captions"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_plan(root: Path, gpu: bool) -> None:
    """ablations/lsg.yaml as one trial (lsg, seed 0) on one GPU without the teacher baseline.

    Why not the plan itself: it asks for ``gpu: 0``, so Ray would hide the GPU and every
    trial would run on the CPU; its 25-step teacher baseline at 1000 images is minutes of
    GPU time; and nine trials at SD size keep nine pairs of 24 GB checkpoints."""
    import yaml

    plan = yaml.safe_load((REPO / "ablations" / "lsg.yaml").read_text())
    plan.update(name="lsg-rehearsal", axes={"strategy": ["lsg"]}, seeds=[0],
                resources={"cpu": 8 if gpu else 1, "gpu": 1 if gpu else 0})
    plan["evaluation"] = {**plan["evaluation"], "teacher_baseline": "off"}
    (root / PLAN_FILE).write_text(yaml.safe_dump(plan, sort_keys=False))


def write_profiles(root: Path, tiny: bool) -> None:
    import yaml

    section = {"eval_num_images": TINY_EVAL_IMAGES if tiny else EVAL_IMAGES,
               "distill": REHEARSAL_DISTILL, "metrics": "embedded" if tiny else "paper"}
    if tiny:
        section["reference"] = "coco2014/reference-images"
    (root / PROFILES_FILE).write_text(yaml.safe_dump({"data_root": str(root), "sd15": section}))


def write_reference(root: Path, layout: dict, tiny: bool) -> str:
    if tiny:
        from distill import world
        from evaluation.fid import write_image_folder

        captions = world.all_captions()[:TINY_EVAL_IMAGES]
        write_image_folder(world.render_batch(captions, list(range(len(captions))), 16),
                           root / "coco2014" / "reference-images")
        return "embedded-world renders (image folder, scored by the embedded CLIP)"
    # Inception's 2048 pool features: synthetic statistics, N(0, I).
    np.savez(root / layout["reference"], mu=np.zeros(2048), sigma=np.eye(2048))
    return "synthetic statistics mu = 0, sigma = I (not COCO-2014)"


def build(root: Path, tiny: bool = False, device: str | None = None) -> dict:
    """Write the data root; returns the manifest (also ROOT/dress-rehearsal.json)."""
    from orchestrator.profiles import LAYOUT

    device = device or ("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    root = Path(root).resolve()
    layout = {**LAYOUT["shared"], **LAYOUT["sd15"]}
    (root / layout["inception_dir"]).mkdir(parents=True, exist_ok=True)
    (root / "coco2014").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    build_teacher(root / layout["teacher"], tiny, device)
    write_texts(root, layout)
    manifest = {"tiny": tiny, "weights": "random (dress rehearsal): not Stable Diffusion 1.5",
                "reference": write_reference(root, layout, tiny)}
    if not tiny:
        manifest["inception"] = build_inception(
            root / layout["inception_dir"] / "inception-2015-12-05.pt")
        manifest["clip"] = build_clip(root / layout["clip_checkpoint"], device)
    write_profiles(root, tiny)
    write_plan(root, gpu=not tiny)
    manifest["build_seconds"] = round(time.perf_counter() - started, 1)
    manifest["bytes"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


# --------------------------------------------------------------------------- phases


def load_profile(root: Path):
    """The sd15 profile as ROOT/profiles.yaml resolves it."""
    from orchestrator import profiles

    saved = {k: os.environ.get(k) for k in (profiles.PROFILES_ENV, profiles.DATA_ROOT_ENV)}
    os.environ[profiles.PROFILES_ENV] = str(Path(root) / PROFILES_FILE)
    os.environ.pop(profiles.DATA_ROOT_ENV, None)
    try:
        return profiles.load_profile("sd15")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class PhaseLog:
    """Appends one JSON line per phase: seconds, peak GPU memory, the process's peak RSS."""

    def __init__(self, out: Path, common: dict):
        self.out, self.common = Path(out), common
        self.cuda = torch.cuda.is_available()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def write(self, row: dict) -> None:
        row = {**self.common, **row}
        with open(self.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Times the body; it may add fields to the yielded dict."""
        self._sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        fields: dict = {}
        started = time.perf_counter()
        yield fields
        self._sync()
        self.write({"kind": "phase", "phase": name,
                    "seconds": round(time.perf_counter() - started, 3),
                    "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    if self.cuda else None,
                    "host_max_rss_gib": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                    **fields})


def _train_phases(log: PhaseLog, teacher, config, iterations: int, workdir: Path):
    """Step, checkpoint write and read of the trial's SiD; returns it for sampling."""
    from distill import checkpoint
    from distill.guidance import NoiseSchedule
    from distill.inputs import draw_prompts, load_prompts
    from distill.loop import SiD
    from distill.streams import Streams

    device = next(teacher.unet.parameters()).device
    prompts = load_prompts(config.prompts)
    sid = SiD(teacher.unet, NoiseSchedule(teacher.alphas_cumprod, device), teacher.sample_shape,
              teacher.encode_prompts([""]), config)
    rng = Streams(config.seed, device)

    def step():
        conds = [teacher.encode_prompts(draw_prompts(prompts, config.batch_size,
                                                     rng[f"prompts_{update}"], device))
                 for update in ("fake_score", "generator")]
        assert sid.iteration(*conds, rng) is not None
        sid.update_ema(0)

    step()  # warm-up: kernels chosen, allocator primed
    with log.phase("step") as fields:
        for _ in range(iterations):
            step()
        fields.update(iterations=iterations, batch_size=config.batch_size,
                      micro_batch_size=config.micro_batch_size, precision=config.precision)
    directory = workdir / "checkpoint"
    with log.phase("checkpoint write") as fields:
        checkpoint.save(directory, iterations, sid.state_tensors(rng),
                        {"config": dataclasses.asdict(config)})
        fields["bytes"] = sum(p.stat().st_size for p in directory.iterdir())
    with log.phase("checkpoint read") as fields:
        tensors, _ = checkpoint.load(directory)
        sid.load_state_tensors(tensors, rng)
        del tensors
    shutil.rmtree(directory)  # 24 GB at SD size: the disk is needed for the run
    return sid


def _eval_phases(log: PhaseLog, teacher, sid, suite) -> None:
    from evaluation.fid import feature_stats, fid_from_stats

    decode_seconds = [0.0]

    def timed_decode(latents: torch.Tensor) -> torch.Tensor:
        log._sync()
        started = time.perf_counter()
        pixels = teacher.decode(latents)
        log._sync()
        decode_seconds[0] += time.perf_counter() - started
        return pixels

    with log.phase("generation") as fields:
        images = suite.generate(sid.sample_fn(teacher.encode_prompts, timed_decode), seed=0)
        fields.update(images=len(images), resolution=images.shape[-1],
                      includes_vae_decode_seconds=round(decode_seconds[0], 3))
    log.write({"kind": "phase", "phase": "VAE decode", "seconds": round(decode_seconds[0], 3),
               "images": len(images), "peak_gpu_gib": "see generation (same pass)"})
    with log.phase("image features") as fields:
        features = suite.extractor.images_features(images)
        fields.update(extractor=suite.extractor.name, images=len(images))
    with log.phase("CLIP score") as fields:
        suite.clip.score(images, suite.captions[:len(images)])
        fields.update(model=suite.clip.name, images=len(images))
    with log.phase("FID") as fields:
        fid_from_stats(*feature_stats(features), suite.reference_mu, suite.reference_sigma)
        fields["dimensions"] = int(features.shape[1])


def phases(root: Path, out: Path, images: int = 256, iterations: int = 3) -> None:
    """Each phase of one sd15 trial on the built data root, timed in this process."""
    from distill.config import DistillConfig
    from distill.inputs import load_config_teacher
    from orchestrator.profiles import build_suite

    root = Path(root).resolve()
    profile = load_profile(root)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    manifest = json.loads((root / MANIFEST).read_text())
    log = PhaseLog(out, {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                         "torch": torch.__version__, "tiny": manifest["tiny"],
                         "inception": manifest.get("inception"), "clip": manifest.get("clip")})
    config = DistillConfig(**{**dict(profile.distill_defaults), "teacher": profile.teacher,
                              "prompts": profile.prompts, "strategy": "lsg", "kappa": 2.0})
    with log.phase("teacher load"):
        teacher = load_config_teacher(config.teacher)
    sid = _train_phases(log, teacher, config, iterations, root / "phases-workdir")
    with log.phase("metric models load") as fields:
        suite = build_suite(profile, "default", images, device)
        fields["protocol"] = suite.protocol
    _eval_phases(log, teacher, sid, suite)


# --------------------------------------------------------------------------- run


def _first_checkpoint(storage: Path) -> Path | None:
    found = sorted(storage.glob("trials/*/*/checkpoint/state.json"))
    return found[0] if found else None


def _group_members(pgid: int) -> list[int]:
    """Processes still in a process group (the killed driver's Ray children, say)."""
    result = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True,
                            text=True, check=False)
    return [int(p) for p in result.stdout.split()]


def rehearse(root: Path, out: Path, timeout: float = 600) -> int:
    """``ablate run rehearsal.yaml --profile sd15``, SIGKILL after the first checkpoint,
    then the same command again to resume and evaluate; returns its exit code."""
    root = Path(root).resolve()
    log = PhaseLog(out, {"torch": torch.__version__})
    storage = root / "storage"
    env = {**os.environ, "ABLATE_PROFILES": str(root / PROFILES_FILE),
           "ABLATE_HOME": str(root / "home"), "ABLATE_STORAGE": str(storage)}
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "ABLATE_DATA"):
        env.pop(key, None)
    command = [sys.executable, "-m", "orchestrator.cli", "run", str(root / PLAN_FILE),
               "--profile", "sd15"]
    deadline = time.monotonic() + timeout
    with log.phase("run until first checkpoint, then SIGKILL") as fields, \
            open(root / "driver-1.log", "w") as driver_log:
        # Own session: after the SIGKILL its survivors can be found and ended by group id.
        driver = subprocess.Popen(command, env=env, cwd=REPO, stdout=driver_log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        while (_first_checkpoint(storage) is None and driver.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.5)
        state = _first_checkpoint(storage)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        time.sleep(5)  # what outlives its driver by a few seconds stays
        survivors = _group_members(driver.pid)
        fields.update(checkpoint=json.loads(state.read_text()) if state else None,
                      survivors_after_kill=len(survivors))
        fields["checkpoint"] = fields["checkpoint"] and {
            k: fields["checkpoint"][k] for k in ("step", "tensors", "tensors_bytes")}
        if survivors:
            os.killpg(driver.pid, signal.SIGKILL)
    with log.phase("resume, finish and evaluate") as fields, \
            open(root / "driver-2.log", "w") as driver_log:
        try:
            result = subprocess.run(command, check=False, env=env, cwd=REPO, stdout=driver_log,
                                    stderr=subprocess.STDOUT,
                                    timeout=max(1.0, deadline - time.monotonic()))
            fields["exit_code"] = result.returncode
        except subprocess.TimeoutExpired:
            fields["exit_code"] = "timed out"
        results = sorted(storage.glob("trials/*/*/result.json"))
        fields["result"] = json.loads(results[0].read_text()) if results else None
    return fields["exit_code"] if isinstance(fields["exit_code"], int) else 124


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="write the data root")
    p.add_argument("root", type=Path)
    p.add_argument("--tiny", action="store_true")
    p = sub.add_parser("phases", help="time each phase of a trial in this process")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--iterations", type=int, default=3)
    p = sub.add_parser("run", help="ablate run with a SIGKILL and a resume")
    p.add_argument("root", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(json.dumps(build(args.root, args.tiny), indent=2))
        return 0
    if args.command == "phases":
        phases(args.root, args.out, args.images, args.iterations)
        return 0
    return rehearse(args.root, args.out, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
