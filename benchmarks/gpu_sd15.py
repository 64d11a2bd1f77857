"""The distillation step at Stable Diffusion 1.5 scale: throughput and MFU (issues 7 and 15).

A randomly initialised UNet with SD1.5's exact config (860M parameters, 64x64x4
latents, 77x768 text embeddings) runs through the project's own ``SiD.iteration``.
Random weights are fine: the cost of a pass does not depend on the values. Rows are
strategy x precision x micro-batch x options, one JSON line each, appended to OUT as
soon as it is measured, so a run cut short still leaves what it measured:

* FLOPs of one real iteration, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (forward and backward of every UNet pass, both updates; the optimiser and EMA have
  no matmuls and count nothing), and the scaled-dot-product attention kernels that ran;
* seconds per iteration from CUDA events around ``--timed`` iterations after
  ``--warmup`` (``time.perf_counter`` on CPU);
* MFU against the datasheet's dense peak of the GPU (:data:`DATASHEET_TFLOPS`) and
  against a dense matmul of the same precision measured in the same run;
* ``--numerics``: the cosine between G's gradient after one iteration with the options
  and without, from the same start, for the SD-shaped UNet and the embedded teacher.

Options (``--options``, each a ``+``-joined set of levers, ``plain`` for none):
``nosync`` (:class:`DeferredSiD`: no host sync inside an iteration),
``channels_last`` (NHWC weights and activations for cuDNN's tensor-core convolutions),
``compile`` (``torch.compile`` of the three UNets; its compile time is reported).
The micro-batch is the global batch here: one micro-batch per update.

    python -m benchmarks.gpu_sd15 OUT.jsonl [--tiny] [--strategies lsg none]
        [--precisions fp32 bf16] [--micro-batches 1 2 4] [--options plain nosync+channels_last]
        [--numerics]                      (--tiny: a CPU wiring check in seconds)

The paper's numerics are fp32 with TF32 off; bf16 rows use autocast on top of that.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distill.config import DistillConfig
from distill.guidance import NoiseSchedule
from distill.loop import SiD
from distill.streams import Streams

LEVERS = ("nosync", "channels_last", "compile")

# Dense (no 2:4 sparsity) tensor-core peaks in TFLOP/s from NVIDIA's datasheets, per
# precision the rows run at: bf16 autocast, fp32 with TF32 (tensor cores) and fp32 IEEE
# (CUDA cores, the paper's numerics). Matched against torch.cuda.get_device_name(), most
# specific name first.
DATASHEET_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak (TFLOP/s) for a device name and precision; None if unknown."""
    for model, peaks in DATASHEET_TFLOPS.items():
        if model in device_name:
            return peaks[precision]
    return None


def sd15_unet(tiny: bool):
    from diffusers import UNet2DConditionModel

    if tiny:
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8)
    # SD1.5's unet/config.json, field for field.
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, center_input_sample=False,
        flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                        "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
        mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
        cross_attention_dim=768, attention_head_dim=8)


def parse_levers(option: str) -> frozenset[str]:
    levers = frozenset() if option == "plain" else frozenset(option.split("+"))
    unknown = sorted(levers - set(LEVERS))
    if unknown:
        raise SystemExit(f"--options {option}: unknown lever(s) {', '.join(unknown)}; "
                         f"known: plain, {', '.join(LEVERS)}")
    return levers


def build_sid(unet: torch.nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...],
              uncond: torch.Tensor, config: DistillConfig, levers: frozenset[str]) -> SiD:
    """``SiD`` with the levers that change how, not what, it computes (``compile`` aside:
    :func:`compile_unets`, after the FLOPs are counted on the eager networks)."""
    if "channels_last" in levers:
        # A copy, since SiD uses the teacher module itself as φ; its own copies (ψ, G, EMA)
        # keep the memory format, and a convolution with channels-last weights returns
        # channels-last activations.
        unet = copy.deepcopy(unet).to(memory_format=torch.channels_last)
    return (DeferredSiD if "nosync" in levers else SiD)(unet, schedule, shape, uncond, config)


class DeferredSiD(SiD):
    """``SiD`` whose iteration never reads a value back to the host, so on a GPU the next
    launches queue while kernels run: the ``nosync`` lever. A non-finite loss still steps
    nothing (fused Adam skips the update on the device), but the caller learns of it only
    from the returned 0-d tensors and the bool tensor ``diverged``, never from None.
    tests/test_gpu_bench.py checks on CPU that it computes exactly ``SiD.iteration``."""

    def iteration(self, cond_fake_score: torch.Tensor, cond_generator: torch.Tensor,
                  rng: Streams) -> dict:
        chunks_fake, chunks_gen, owned = self._chunks(cond_fake_score, cond_generator)
        loss_fake = self._fake_score_update(chunks_fake, owned, rng)
        diverged = ~torch.isfinite(loss_fake)
        _step_unless(self.opt_fake_score, diverged)
        loss_gen = self._generator_update(chunks_gen, owned, rng)
        # As in SiD.iteration: G is not stepped in an iteration whose ψ loss diverged.
        diverged = diverged | ~torch.isfinite(loss_gen)
        _step_unless(self.opt_generator, diverged)
        return {"loss_fake_score": loss_fake, "loss_generator": loss_gen, "diverged": diverged}


def _step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """``optimizer.step()``, a no-op where the 0-d bool tensor ``skip`` is true, decided on the
    device: fused Adam takes ``found_inf`` (the input torch.amp.GradScaler sets) and skips
    the update, step count included, inside its kernel, so ``skip`` is never read back."""
    # An attribute fused Adam reads (GradScaler sets it), not declared on Optimizer.
    optimizer.found_inf = skip.float()  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def compile_unets(sid: SiD) -> None:
    for name in ("generator", "fake_score", "teacher"):
        setattr(sid, name, torch.compile(getattr(sid, name)))


class AttentionOps(TorchDispatchMode):
    """Records which scaled-dot-product attention ATen ops (flash, memory-efficient, cuDNN,
    math, CPU) run: the backend PyTorch picked, forward and backward."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.__name__:
            self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def count_flops(sid: SiD, cond: torch.Tensor, rng: Streams) -> tuple[int, list[str]]:
    """FLOPs of one iteration, and the attention ops that ran in it."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, AttentionOps() as attention:
        sid.iteration(cond, cond, rng)
    return counter.get_total_flops(), sorted(attention.names)


def seconds_per_call(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Mean seconds of ``fn``: CUDA events around the calls on a GPU (what the GPU spent,
    including any time it waited for the host), perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / repeats
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def matmul_tflops(device: torch.device, precision: str, n: int) -> float:
    """Measured dense matmul throughput, n x n by n x n, the best the GPU does here."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    seconds = seconds_per_call(lambda: a @ b, 20 if device.type == "cuda" else 3, device)
    return 2 * n**3 / seconds / 1e12


def _environment(device: torch.device, unet: torch.nn.Module) -> dict:
    return {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "unet_parameters": sum(p.numel() for p in unet.parameters())}


class Bench:
    """The fixed inputs of every row: the UNet, schedule, shapes and the matmul baselines."""

    def __init__(self, tiny: bool, device: torch.device, out: Path, warmup: int, timed: int):
        from diffusers import DDPMScheduler

        self.tiny, self.device, self.out = tiny, device, out
        self.warmup, self.timed = warmup, timed
        torch.manual_seed(0)
        self.unet = sd15_unet(tiny).to(device).requires_grad_(False)
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                                  beta_start=0.00085, beta_end=0.012)
        self.schedule = NoiseSchedule(scheduler.alphas_cumprod, device)
        self.tokens, self.dim = (10, 64) if tiny else (77, 768)
        size = self.unet.config.sample_size
        self.shape = (4, size, size)
        self.uncond = torch.randn(1, self.tokens, self.dim, device=device)
        self.env = _environment(device, self.unet)
        self.matmul = {p: matmul_tflops(device, p, 256 if tiny else 8192)
                       for p in ("fp32", "bf16")}
        self.write({"kind": "matmul", "size": 256 if tiny else 8192,
                    **{f"{p}_tflops": round(v, 3) for p, v in self.matmul.items()}})

    def write(self, row: dict) -> None:
        row = {**self.env, **row}
        with open(self.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def config(self, strategy: str, precision: str, micro_batch: int) -> DistillConfig:
        return DistillConfig(strategy=strategy, kappa=2.0, batch_size=micro_batch,
                             micro_batch_size=micro_batch, precision=precision,
                             lr_generator=1e-6, lr_fake_score=1e-6)

    def cond(self, micro_batch: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(1)
        return torch.randn(micro_batch, self.tokens, self.dim, device=self.device,
                           generator=generator)

    def row(self, strategy: str, precision: str, micro_batch: int, option: str) -> dict:
        levers = parse_levers(option)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sid = build_sid(self.unet, self.schedule, self.shape, self.uncond,
                        self.config(strategy, precision, micro_batch), levers)
        rng = Streams(0, self.device)
        cond = self.cond(micro_batch)
        flops, attention = count_flops(sid, cond, rng)
        compile_seconds = None
        if "compile" in levers:
            compile_unets(sid)
            started = time.perf_counter()
            sid.iteration(cond, cond, rng)  # compiles forward and backward of every call
            compile_seconds = round(time.perf_counter() - started, 1)
        for _ in range(self.warmup):  # kernels chosen, allocator primed
            sid.iteration(cond, cond, rng)
        seconds = seconds_per_call(lambda: sid.iteration(cond, cond, rng), self.timed,
                                   self.device)
        achieved = flops / seconds / 1e12
        peak = datasheet_peak(self.env["device"], precision)
        return {
            "kind": "iteration", "strategy": strategy, "precision": precision, "tf32": False,
            "micro_batch": micro_batch, "options": option, "flops_per_iteration": flops,
            "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode",
            "attention_ops": attention, "warmup_iterations": self.warmup,
            "timed_iterations": self.timed, "compile_seconds": compile_seconds,
            "seconds_per_iteration": round(seconds, 5),
            "images_per_second": round(micro_batch / seconds, 3),
            "achieved_tflops": round(achieved, 3), "datasheet_peak_tflops": peak,
            "mfu_datasheet": round(achieved / peak, 4) if peak else None,
            "measured_matmul_tflops": round(self.matmul[precision], 3),
            "mfu_measured_matmul": round(achieved / self.matmul[precision], 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if self.device.type == "cuda" else None,
        }

    def numerics(self, precision: str, option: str) -> list[dict]:
        """G's gradient after one lsg iteration with ``option`` against plain, same start."""
        from distill.inputs import load_config_teacher

        config = self.config("lsg", precision, 2)
        rows = [{"kind": "numerics", "teacher": "sd15-shaped random", "precision": precision,
                 "options": option, "generator_gradient_cosine": gradient_cosine(
                     self.unet, self.schedule, self.shape, self.uncond, self.cond(2), config,
                     parse_levers(option))}]
        teacher = load_config_teacher("embedded:default").to(self.device)
        cond = teacher.encode_prompts(["a small red circle on the center"] * 2)
        rows.append({"kind": "numerics", "teacher": teacher.teacher_id, "precision": precision,
                     "options": option, "generator_gradient_cosine": gradient_cosine(
                         teacher.unet, NoiseSchedule(teacher.alphas_cumprod, self.device),
                         teacher.sample_shape, teacher.encode_prompts([""]), cond, config,
                         parse_levers(option))})
        return rows


def generator_gradient(unet, schedule, shape, uncond, cond, config, levers) -> list[torch.Tensor]:
    """G's gradient after one iteration from the teacher's weights and seed 0."""
    sid = build_sid(unet, schedule, shape, uncond, config, levers)
    if "compile" in levers:
        compile_unets(sid)
    sid.iteration(cond, cond, Streams(0, cond.device))
    return [p.grad.detach().clone() for p in sid.generator.parameters()]


def gradient_cosine(unet, schedule, shape, uncond, cond, config, levers) -> float:
    plain = generator_gradient(unet, schedule, shape, uncond, cond, config, frozenset())
    gc.collect()
    fast = generator_gradient(unet, schedule, shape, uncond, cond, config, levers)
    dot = sum((a.double() * b.double()).sum() for a, b in zip(plain, fast))
    norm_plain = sum(a.double().square().sum() for a in plain).sqrt()
    norm_fast = sum(b.double().square().sum() for b in fast).sqrt()
    return float(dot / (norm_plain * norm_fast))


def main(argv: list[str] | None = None) -> None:
    from distill import speed

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSON-lines file; rows are appended")
    parser.add_argument("--tiny", action="store_true", help="tiny UNet on CPU (wiring check)")
    parser.add_argument("--strategies", nargs="+", default=["lsg", "none"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=["fp32", "bf16"])
    parser.add_argument("--micro-batches", nargs="*", type=int, default=[1, 2, 4],
                        help="none: no timing rows (with --numerics, only the numerics)")
    parser.add_argument("--options", nargs="+", default=["plain"],
                        help=f"'plain' or '+'-joined levers from {', '.join(LEVERS)}")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=3)
    parser.add_argument("--numerics", action="store_true",
                        help="also G's gradient cosine, each option against plain")
    args = parser.parse_args(argv)
    for option in args.options:
        parse_levers(option)  # a typo fails before anything is measured
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    speed.set_tf32(False)
    bench = Bench(args.tiny, device, args.out, args.warmup, args.timed)
    measure_rows(bench, args)
    if args.numerics:
        for precision in args.precisions:
            for option in args.options:
                if option != "plain":
                    for row in bench.numerics(precision, option):
                        bench.write(row)


def measure_rows(bench: Bench, args: argparse.Namespace) -> None:
    for strategy in args.strategies:
        for precision in args.precisions:
            for micro_batch in args.micro_batches:
                for option in args.options:
                    try:
                        row = bench.row(strategy, precision, micro_batch, option)
                    except torch.OutOfMemoryError:
                        row = {"kind": "iteration", "strategy": strategy, "precision": precision,
                               "micro_batch": micro_batch, "options": option,
                               "error": "out of memory"}
                    bench.write(row)
                    gc.collect()

if __name__ == "__main__":
    main()
