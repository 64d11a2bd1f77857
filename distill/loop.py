"""The SiD-LSG training loop (docs/algorithm.md): one ψ update then one G update per iteration.

:class:`SiD` holds the three networks and does one iteration; :func:`distill`
is the run: it loads teacher and prompts, resumes from a checkpoint, and keeps
every side effect (reporting, checkpoints, evaluation) in one maintenance
block at the end of an iteration. The outside world hears from the loop only
through ``report(metrics, step)``, ``evaluate(sample_fn, step)`` and
``on_checkpoint(path, step)``.

All randomness of training (prompt choice, prompt dropout, z, t, ε) comes from
:class:`distill.streams.Streams`, one stream per role drawn alike under every strategy, so
arms run with one seed see the same prompts and noise; the streams are checkpointed, so a
resumed run continues bit-identically on CPU. Evaluation uses its own seeded generator and
never disturbs them.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill import checkpoint, parallel, speed, streams, world
from distill import metrics as registry
from distill.config import ConfigError, DistillConfig
from distill.generator import SampleFn, autocast, generate, sampler
from distill.guidance import NoiseSchedule, add_noise, denoise, guidance_scales, predict_eps
from distill.inputs import draw_prompts, load_config_teacher, load_prompts
from distill.losses import fake_score_loss, sid_generator_loss
from distill.streams import Streams

Report = Callable[[dict[str, float], int], None]

# Config keys that may change between a checkpoint and its resumption: they set how
# long the run is and how often it is watched, not what one iteration computes.
RESUMABLE_CHANGES = frozenset({"iterations", "log_every", "checkpoint_every", "eval_every",
                               "eval_num_images"})
LOSS_KEYS = (registry.LOSS_FAKE_SCORE.key, registry.LOSS_GENERATOR.key)


@dataclass(frozen=True)
class DistillResult:
    status: str  # "finished" | "diverged"
    iterations: int  # completed iterations
    final_metrics: dict[str, float]
    checkpoint_dir: Path
    resumed_from: int = 0  # the checkpoint's iteration this call continued from (0: fresh)


def _no_report(metrics: dict[str, float], step: int) -> None:
    del metrics, step


def lr_factor(step: int, iterations: int, anneal_fraction: float) -> float:
    """1 until the last ``anneal_fraction`` of ``iterations``, then linearly down: the
    iteration after ``step`` completed ones gets (iterations - step) / annealed, so the
    last one still moves (1 / annealed) and none gets a negative rate."""
    annealed = anneal_fraction * iterations
    start = iterations - annealed
    if annealed <= 0 or step < start:
        return 1.0
    return (iterations - step) / annealed


class SiD:
    """Teacher φ (frozen), fake score ψ and generator G (copies of φ), G's EMA, and Adam
    for ψ and G. :meth:`iteration` is one ψ step then one G step."""

    def __init__(self, teacher_unet: torch.nn.Module, schedule: NoiseSchedule,
                 sample_shape: tuple[int, ...], uncond: torch.Tensor, config: DistillConfig):
        self.config = config
        self.scales = guidance_scales(config.strategy, config.kappa)
        self.schedule = schedule
        self.sample_shape = tuple(sample_shape)
        self.uncond = uncond  # (1, L, D): the empty prompt, encoded once per run
        teacher_unet.requires_grad_(False)
        self.fake_score = copy.deepcopy(teacher_unet).requires_grad_(True).train()
        self.generator = copy.deepcopy(teacher_unet).requires_grad_(True).train()
        self.generator_ema = copy.deepcopy(teacher_unet).requires_grad_(False).eval()
        self.teacher = speed.teacher_network(teacher_unet, config)
        speed.enable_gradient_checkpointing(config, self.teacher, self.fake_score, self.generator)
        betas = (config.adam_beta1, config.adam_beta2)
        # Fused Adam (CPU and CUDA): one kernel over all parameters instead of a loop of small ops.
        self.opt_fake_score = torch.optim.Adam(self.fake_score.parameters(),
                                               lr=config.lr_fake_score, betas=betas,
                                               eps=config.adam_eps, fused=True)
        self.opt_generator = torch.optim.Adam(self.generator.parameters(), lr=config.lr_generator,
                                              betas=betas, eps=config.adam_eps, fused=True)
        self.device = uncond.device

    def autocast(self):
        return autocast(self.config.precision, self.device)

    def _draw(self, cond: torch.Tensor, streams: Streams, update: str, dropout: bool):
        """A micro-batch's randomness for ``update`` ('fake_score' or 'generator'), each from
        its own stream. The ψ update draws the dropout mask whatever the strategy and applies
        it only if ``dropout``, so every strategy consumes every stream alike."""
        b = cond.shape[0]
        if update == "fake_score":
            drop = torch.rand(b, generator=streams["dropout"], device=self.device)
            if dropout:
                cond = torch.where((drop < self.config.prompt_dropout).view(-1, 1, 1),
                                   self.uncond, cond)
        z = torch.randn((b, *self.sample_shape), generator=streams[f"z_{update}"],
                        device=self.device)
        t = torch.randint(self.config.t_min, self.config.t_max + 1, (b,),
                          generator=streams[f"t_{update}"], device=self.device)
        noise = torch.randn((b, *self.sample_shape), generator=streams[f"noise_{update}"],
                            device=self.device)
        return cond, z, t, noise

    def iteration(self, cond_fake_score: torch.Tensor, cond_generator: torch.Tensor,
                  rng: Streams) -> dict | None:
        """One ψ step then one G step, each on its own batch of prompt embeddings (B, L, D),
        as the official loop draws a fresh prompt batch for each update.

        Prompt dropout (docs/algorithm.md, "Prompt dropout") touches only the ψ update: its
        generator sample and ψ's target both see the dropped prompts, so ψ learns the
        unconditional branch that κ1, κ2 ≠ 1 read. The G update never sees the empty prompt
        except as the unconditional half of a guided call.

        Returns the two losses as floats, or None when one is NaN/inf (nothing is stepped
        then). Each check reads the loss back to the host; the GPU benchmark's variant
        without that sync is ``benchmarks.gpu_sd15.DeferredSiD``.
        """
        chunks_fake, chunks_gen, owned = self._chunks(cond_fake_score, cond_generator)
        loss_fake = self._fake_score_update(chunks_fake, owned, rng)
        if not torch.isfinite(loss_fake):
            return None
        self.opt_fake_score.step()
        loss_gen = self._generator_update(chunks_gen, owned, rng)
        if not torch.isfinite(loss_gen):
            return None
        self.opt_generator.step()
        return {registry.LOSS_FAKE_SCORE.key: float(loss_fake),
                registry.LOSS_GENERATOR.key: float(loss_gen)}

    def _chunks(self, cond_fake_score: torch.Tensor, cond_generator: torch.Tensor):
        """Both updates' micro-batches, and which of them this rank computes."""
        cfg = self.config
        chunks_fake = cond_fake_score.split(cfg.micro_batch_size)
        chunks_gen = cond_generator.split(cfg.micro_batch_size)
        if len(chunks_fake) != len(chunks_gen):
            raise ValueError(f"the two updates' prompt batches differ in size: "
                             f"{cond_fake_score.shape[0]} vs {cond_generator.shape[0]}")
        # Data parallel: every rank draws every micro-batch's randomness (one stream, as a
        # single worker would) and computes only its own share (distill/parallel.py).
        return chunks_fake, chunks_gen, parallel.owned_chunks(len(chunks_fake))

    def _fake_score_update(self, chunks: tuple[torch.Tensor, ...], owned: range,
                           rng: Streams) -> torch.Tensor:
        """ψ's gradient (denoising score matching on G's samples, guided by κ1); its loss."""
        cfg, scales = self.config, self.scales
        self.opt_fake_score.zero_grad(set_to_none=True)
        loss_fake = torch.zeros((), device=self.device)
        for i, chunk in enumerate(chunks):
            emb, z, t, noise = self._draw(chunk, rng, "fake_score",
                                          dropout=scales.uses_prompt_dropout)
            if i not in owned:
                continue
            share = chunk.shape[0] / cfg.batch_size
            with self.autocast():
                with torch.no_grad():
                    x_g = generate(self.generator, z, emb, cfg.t_init, self.schedule)
                x_t = add_noise(x_g.float(), noise, t, self.schedule)
                eps = predict_eps(self.fake_score, x_t, t, emb, self.uncond, scales.kappa1)
            loss = fake_score_loss(eps, noise) * share
            loss.backward()
            loss_fake += loss.detach()
        parallel.sum_gradients(self.fake_score.parameters())
        return parallel.sum_scalar(loss_fake)

    def _generator_update(self, chunks: tuple[torch.Tensor, ...], owned: range,
                          rng: Streams) -> torch.Tensor:
        """G's gradient; its loss. Gradients reach x_g through x_t and directly; φ and ψ are
        not updated, so ψ's weights are frozen here to skip computing their (unused)
        gradients."""
        cfg, scales = self.config, self.scales
        self.opt_generator.zero_grad(set_to_none=True)
        self.fake_score.requires_grad_(False)
        loss_gen = torch.zeros((), device=self.device)
        try:
            for i, chunk in enumerate(chunks):
                emb, z, t, noise = self._draw(chunk, rng, "generator", dropout=False)
                if i not in owned:
                    continue
                share = chunk.shape[0] / cfg.batch_size
                with self.autocast():
                    x_g = generate(self.generator, z, emb, cfg.t_init, self.schedule).float()
                    x_t = add_noise(x_g, noise, t, self.schedule)
                    y_real = denoise(self.teacher, x_t, t, emb, self.uncond, scales.kappa4,
                                     self.schedule)
                    y_fake = denoise(self.fake_score, x_t, t, emb, self.uncond, scales.kappa2,
                                     self.schedule)
                loss = sid_generator_loss(y_real, y_fake, x_g, cfg.alpha) * share
                loss.backward()
                loss_gen += loss.detach()
        finally:
            self.fake_score.requires_grad_(True)
        parallel.sum_gradients(self.generator.parameters())
        return parallel.sum_scalar(loss_gen)

    def set_learning_rates(self, step: int) -> None:
        """Both optimizers' learning rates for the iteration after ``step`` completed ones
        (config.lr_anneal_fraction; a function of the step alone, so a resumed run matches)."""
        cfg = self.config
        factor = lr_factor(step, cfg.iterations, cfg.lr_anneal_fraction)
        for optimizer, lr in ((self.opt_fake_score, cfg.lr_fake_score),
                              (self.opt_generator, cfg.lr_generator)):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor

    @torch.no_grad()
    def update_ema(self, images_seen: int) -> None:
        """EDM's EMA: half-life in images, ramped in as a fraction of images seen so far.

        ``images_seen`` counts the images before this iteration's step (the official loop's
        ``cur_nimg``), so with ramp-up the first update copies G into the EMA outright."""
        cfg = self.config
        halflife_images = cfg.ema_halflife_kimg * 1000
        if cfg.ema_rampup_ratio is not None:
            halflife_images = min(halflife_images, images_seen * cfg.ema_rampup_ratio)
        beta = 0.5 ** (cfg.batch_size / max(halflife_images, 1e-8))
        ema: list[torch.Tensor] = list(self.generator_ema.parameters())
        torch._foreach_lerp_(ema, list(self.generator.parameters()), 1.0 - beta)

    def state_tensors(self, rng: Streams) -> dict[str, torch.Tensor]:
        tensors = {}
        for prefix, module in (("generator", self.generator), ("generator_ema", self.generator_ema),
                               ("fake_score", self.fake_score)):
            tensors.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        tensors.update(checkpoint.flatten_optimizer("opt_generator", self.opt_generator))
        tensors.update(checkpoint.flatten_optimizer("opt_fake_score", self.opt_fake_score))
        tensors.update(rng.state())
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], rng: Streams) -> None:
        for prefix, module in (("generator", self.generator), ("generator_ema", self.generator_ema),
                               ("fake_score", self.fake_score)):
            module.load_state_dict({k[len(prefix) + 1:]: v for k, v in tensors.items()
                                    if k.startswith(prefix + ".")})
        checkpoint.unflatten_optimizer("opt_generator", tensors, self.opt_generator)
        checkpoint.unflatten_optimizer("opt_fake_score", tensors, self.opt_fake_score)
        rng.load_state(tensors)

    def sample_fn(self, encode: Callable[[list[str]], torch.Tensor],
                  decode: Callable[[torch.Tensor], torch.Tensor]) -> SampleFn:
        """(prompts, seed) -> images in [-1, 1] on CPU from the EMA generator in one step."""
        return sampler(self.generator_ema, self.schedule, self.sample_shape,
                       self.config.t_init, self.config.precision, encode, decode)


def _resume(directory: Path, sid: SiD, rng: Streams, config: DistillConfig,
            teacher_hash: str) -> dict:
    tensors, meta = checkpoint.load(directory)
    saved = meta.get("config", {})
    current = dataclasses.asdict(config)
    changed = sorted(k for k in set(saved) | set(current)
                     if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if changed:
        raise checkpoint.CheckpointError(
            f"{directory}: the checkpoint was written with a different config ("
            + ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            + "); use a new workdir or delete this checkpoint")
    if meta.get("teacher_hash") != teacher_hash:
        raise checkpoint.CheckpointError(
            f"{directory}: the checkpoint was distilled from teacher {meta.get('teacher_hash')}, "
            f"not {teacher_hash}; use a new workdir or delete this checkpoint")
    if not all(streams.STATE_PREFIX + role in tensors for role in streams.ROLES):
        raise checkpoint.CheckpointError(
            f"{directory}: the checkpoint was written by an older loop (one random stream, "
            "not one per role); use a new workdir or delete this checkpoint")
    sid.load_state_tensors(tensors, rng)
    return meta


def _set_aside(directory: Path) -> Path:
    """Rename an unusable checkpoint folder to a free ``<name>.unreadable-<n>``."""
    for n in itertools.count(1):
        aside = directory.with_name(f"{directory.name}.unreadable-{n}")
        if not aside.exists():
            directory.rename(aside)
            return aside
    raise AssertionError("unreachable")


def _evaluate_on_main(evaluate, sample_fn: SampleFn, step: int) -> dict[str, float]:
    """Rank 0 evaluates; the other data-parallel ranks report nothing, but still report,
    so every rank calls ``report`` equally often (Ray Train's report is a barrier)."""
    return evaluate(sample_fn, step) if parallel.is_main() else {}


@dataclass
class _LossLog:
    """Loss sums since the last report, and the training time and images of that span.
    The sums travel with the checkpoint, so a resumed run reports exactly what an
    uninterrupted one would; the time does not (images/s is measured, not replayed)."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(LOSS_KEYS, 0.0))
    count: int = 0
    last: dict[str, float] = field(default_factory=dict)  # the latest reported means
    seconds: float = 0.0
    images: int = 0

    def add(self, losses: dict[str, float], seconds: float, images: int) -> None:
        for k in LOSS_KEYS:
            self.sums[k] += losses[k]
        self.count += 1
        self.seconds += seconds
        self.images += images

    def flush(self) -> dict[str, float]:
        """The span's mean losses and images/s; starts the next span."""
        self.last = {k: self.sums[k] / self.count for k in LOSS_KEYS}
        metrics = {**self.last, registry.IMAGES_PER_SECOND.key: self.images / self.seconds}
        self.sums, self.count = dict.fromkeys(LOSS_KEYS, 0.0), 0
        self.seconds, self.images = 0.0, 0
        return metrics

    def state(self) -> dict:
        return {"loss_sums": self.sums, "loss_count": self.count, "last_losses": self.last}


def _restore(directory: Path, sid: SiD, rng: Streams, config: DistillConfig,
             teacher_hash: str) -> tuple[int, _LossLog]:
    """The step and loss log to continue from: the checkpoint's, or a fresh start."""
    if not checkpoint.exists(directory):
        return 0, _LossLog()
    try:
        meta = _resume(directory, sid, rng, config, teacher_hash)
    except checkpoint.UnreadableCheckpoint as exc:
        # Nothing readable to resume from (files lost with a node, say): keep the
        # remains for inspection and start over, which on CPU ends bit-identical.
        # One rank renames (the others find no checkpoint and start over alike).
        aside = _set_aside(directory) if parallel.is_main() else "rank 0's copy"
        print(f"{exc}; starting from scratch (the unreadable files are in {aside})",
              file=sys.stderr, flush=True)
        return 0, _LossLog()
    if "fallback" in meta:
        print(f"{directory}: {meta['fallback']}", file=sys.stderr, flush=True)
    return meta["step"], _LossLog(meta["loss_sums"], meta["loss_count"], meta["last_losses"])


def _inputs(config: DistillConfig, teacher, prompts: list[str] | None, progress: bool):
    """The teacher and prompts a run was given, else the ones its config names."""
    if teacher is None:
        teacher = load_config_teacher(config.teacher, progress=progress)
    prompts = load_prompts(config.prompts) if prompts is None else prompts
    if not prompts:
        raise ConfigError("distill: the prompt list is empty")
    return teacher, prompts


def _due(every: int, step: int) -> bool:
    """Whether a periodic task (every 0: never) falls on ``step``."""
    return bool(every) and step % every == 0


def _train_step(sid: SiD, teacher, prompts: list[str], rng: Streams, step: int,
                device: torch.device) -> dict | None:
    """The iteration after ``step`` completed ones: each update draws its own prompt batch
    (the official loop's two iterator draws), each encoded once for all its micro-batches
    and network calls; then ψ's and G's steps and the EMA. None if a loss diverged (then
    nothing was stepped)."""
    config = sid.config
    cond_fake_score = teacher.encode_prompts(
        draw_prompts(prompts, config.batch_size, rng["prompts_fake_score"], device))
    cond_generator = teacher.encode_prompts(
        draw_prompts(prompts, config.batch_size, rng["prompts_generator"], device))
    sid.set_learning_rates(step)
    losses = sid.iteration(cond_fake_score, cond_generator, rng)
    if losses is not None:
        sid.update_ema(step * config.batch_size)
    return losses


def _save_checkpoint(checkpoint_dir: Path, step: int, sid: SiD, rng: Streams, teacher,
                     prompts: list[str], log, on_checkpoint) -> None:
    if not parallel.is_main():  # every rank holds the same state; one writes it
        return
    checkpoint.save(checkpoint_dir, step, sid.state_tensors(rng), {
        "config": dataclasses.asdict(sid.config), "teacher_id": teacher.teacher_id,
        "teacher_hash": teacher.teacher_hash, "prompt_set_hash": world.prompt_set_hash(prompts),
        **log.state()})
    if on_checkpoint is not None:
        on_checkpoint(checkpoint_dir, step)


def _show(bar, metrics: dict[str, float]) -> None:
    bar.set_postfix({"ψ": f"{metrics[registry.LOSS_FAKE_SCORE.key]:.4g}",
                     "G": f"{metrics[registry.LOSS_GENERATOR.key]:.4g}",
                     "img/s": f"{metrics[registry.IMAGES_PER_SECOND.key]:.1f}"})


def distill(config: DistillConfig, workdir: Path, *, teacher=None, prompts: list[str] | None = None,
            report: Report = _no_report,
            evaluate: Callable[[SampleFn, int], dict[str, float]] | None = None,
            on_checkpoint: Callable[[Path, int], None] | None = None,
            progress: bool = False) -> DistillResult:
    """Run (or resume) one distillation trial in ``workdir``; see the module docstring."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    teacher, prompts = _inputs(config, teacher, prompts, progress)
    device = next(teacher.unet.parameters()).device
    parallel.check_batch(config.batch_size, config.micro_batch_size)
    speed.set_tf32(config.allow_tf32)
    sid = SiD(teacher.unet, NoiseSchedule(teacher.alphas_cumprod, device), teacher.sample_shape,
              teacher.encode_prompts([""]), config)
    rng = Streams(config.seed, device)
    sample_fn = sid.sample_fn(teacher.encode_prompts, teacher.decode)
    checkpoint_dir = workdir / "checkpoint"
    step, log = _restore(checkpoint_dir, sid, rng, config, teacher.teacher_hash)
    resumed_from = step

    from tqdm import tqdm

    bar = tqdm(total=config.iterations, initial=step, desc=f"distill {config.strategy}",
               unit="it", disable=not progress or not parallel.is_main())
    eval_metrics: dict[str, float] = {}
    try:
        while step < config.iterations:
            started = time.perf_counter()
            losses = _train_step(sid, teacher, prompts, rng, step, device)
            if losses is None:
                report({"diverged": 1.0}, step + 1)
                return DistillResult("diverged", step, {"diverged": 1.0}, checkpoint_dir,
                                     resumed_from)
            step += 1
            log.add(losses, time.perf_counter() - started, config.batch_size)
            bar.update(1)

            # Maintenance: every side effect of the loop happens here.
            last = step == config.iterations
            if _due(config.log_every, step) or last:
                metrics = log.flush()
                report(metrics, step)
                _show(bar, metrics)
            if last or _due(config.checkpoint_every, step):
                _save_checkpoint(checkpoint_dir, step, sid, rng, teacher, prompts, log,
                                 on_checkpoint)
            if evaluate is not None and _due(config.eval_every, step) and not last:
                eval_metrics = _evaluate_on_main(evaluate, sample_fn, step)
                report(eval_metrics, step)
    finally:
        bar.close()
    if evaluate is not None:
        eval_metrics = _evaluate_on_main(evaluate, sample_fn, step)
        report(eval_metrics, step)
    return DistillResult("finished", step, {**eval_metrics, **log.last}, checkpoint_dir,
                         resumed_from)
