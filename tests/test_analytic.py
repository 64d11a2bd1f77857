"""SiD on Gaussian data, where every score is known in closed form.

Class c's data is N(μ_c, s²·I) and the unconditional branch's is N(μ_∅, s²·I),
so the exact ε-predictor is ε*(x_t, t, c) = σ_t (x_t - a_t μ_c) / (a_t² s² + σ_t²)
(a_t = sqrt(ᾱ_t), σ_t = sqrt(1-ᾱ_t)). Because it is linear in μ, the guided
predictor at scale κ is exactly the predictor of N(μ_∅ + κ(μ_c - μ_∅), s²·I):
classifier-free guidance has an exact target distribution. The teacher, the
fake score and the generator are this model with learnable (μ, log s²), with
the UNet's call signature, so the real :class:`distill.loop.SiD` trains them.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from distill.config import DistillConfig
from distill.generator import generate
from distill.guidance import NoiseSchedule
from distill.loop import SiD
from distill.streams import Streams

DIM = 2
MEANS = torch.tensor([[0.0, 0.0],    # ∅ (the empty prompt)
                      [1.0, 0.0],    # class 1
                      [0.0, -1.0]])  # class 2
DATA_STD = 0.5


def _schedule():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return NoiseSchedule(torch.cumprod(1 - betas, 0))


class GaussianEps(torch.nn.Module):
    """Exact ε-predictor of N(μ_c, s²I); the prompt embedding is a one-hot over classes."""

    def __init__(self, schedule: NoiseSchedule):
        super().__init__()
        self.means = torch.nn.Parameter(MEANS.clone())
        self.log_var = torch.nn.Parameter(torch.tensor(2 * math.log(DATA_STD)))
        self.schedule = schedule

    def forward(self, x, t, encoder_hidden_states):
        mean = (encoder_hidden_states[:, 0, :] @ self.means).view(x.shape)
        a, s = self.schedule.coefficients(t, x)
        return SimpleNamespace(sample=s * (x - a * mean) / (a * a * self.log_var.exp() + s * s))


def _onehot(classes):
    return torch.nn.functional.one_hot(classes, len(MEANS)).float().unsqueeze(1)


def _generator_stats(sid, cls, n=4000):
    z = torch.randn(n, DIM, 1, 1, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        x = generate(sid.generator_ema, z, _onehot(torch.full((n,), cls)), sid.config.t_init,
                     sid.schedule).view(n, DIM)
    return x.mean(0), x.std(0)


@pytest.fixture(autouse=True)
def one_thread():
    # Tensors of 2 numbers: threads only add synchronisation (much slower on a busy box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(strategy, kappa, iterations=400):
    schedule = _schedule()
    # Adam moves log s² by about lr per step; it has to travel ~1.7 to reach the data's spread.
    config = DistillConfig(strategy=strategy, kappa=kappa, batch_size=64, micro_batch_size=32,
                           lr_generator=2e-2, lr_fake_score=2e-2, iterations=iterations,
                           ema_halflife_kimg=1.0, ema_rampup_ratio=0.25)
    sid = SiD(GaussianEps(schedule), schedule, (DIM, 1, 1), _onehot(torch.tensor([0])), config)
    rng = Streams(0)
    for step in range(iterations):
        classes_fake = torch.randint(1, len(MEANS), (config.batch_size,),
                                     generator=rng["prompts_fake_score"])
        classes_gen = torch.randint(1, len(MEANS), (config.batch_size,),
                                    generator=rng["prompts_generator"])
        assert sid.iteration(_onehot(classes_fake), _onehot(classes_gen), rng) is not None
        sid.update_ema(step * config.batch_size)
    return sid


def test_untrained_generator_is_the_closed_form_one_step_teacher():
    # x_g = (x_init - σ ε*(x_init)) / a with x_init = σ z is affine in z:
    # mean = μ σ² / (a² s² + σ²), std = σ a s² / (a² s² + σ²) at T = t_init.
    schedule = _schedule()
    config = DistillConfig()
    sid = SiD(GaussianEps(schedule), schedule, (DIM, 1, 1), _onehot(torch.tensor([0])), config)
    a2 = float(schedule.alphas_cumprod[config.t_init])
    denominator = a2 * DATA_STD**2 + (1 - a2)
    mean, std = _generator_stats(sid, 1)
    assert mean.tolist() == pytest.approx([(1 - a2) / denominator, 0.0], abs=0.02)
    expected_std = (1 - a2) ** 0.5 * a2**0.5 * DATA_STD**2 / denominator
    assert std.tolist() == pytest.approx([expected_std] * 2, rel=0.05)
    assert expected_std < 0.3 * DATA_STD  # far from the data: there is something to learn


@pytest.mark.parametrize("strategy, kappa, guided", [
    ("lsg", 2.0, True),
    ("cfg", 2.0, True),
    ("none", 2.0, False),
])
def test_sid_converges_to_the_guided_or_unguided_target(strategy, kappa, guided):
    sid = _train(strategy, kappa)
    for cls in (1, 2):
        target = MEANS[0] + (kappa if guided else 1.0) * (MEANS[cls] - MEANS[0])
        mean, std = _generator_stats(sid, cls)
        # Tolerances are a tenth of the guided-unguided gap (1.0) and of the spread (0.5).
        assert (mean - target).abs().max() < 0.1, (cls, mean, target)
        assert (std - DATA_STD).abs().max() < 0.05, (cls, std)
