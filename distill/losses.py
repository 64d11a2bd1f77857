"""SiD's two losses as pure functions of tensors (docs/algorithm.md, "Symbols").

Both sum over the sample's elements and average over the batch, as the
official code does (``loss.sum() / batch``), and compute in (at least) float32 even when
the networks ran under bf16 autocast.
"""

from __future__ import annotations

import torch

# The official code clips the per-sample weight here so a perfect sample cannot divide by 0.
MIN_WEIGHT = 1e-5


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _per_sample_sum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(dim=1)


def fake_score_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """L_ψ = (1/B) Σ_i ‖ε̂_ψ(x_t,i) - ε_i‖²: denoising score matching on generator samples."""
    return _per_sample_sum((_at_least_fp32(eps_pred) - _at_least_fp32(noise)).square()).mean()


def sid_weight(x_g: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
    """w = mean over C,H,W of |x_g - y_real|, clipped at 1e-5, gradient stopped; (B, 1, 1, 1)."""
    dims = tuple(range(1, x_g.ndim))
    with torch.no_grad():
        error = (_at_least_fp32(x_g) - _at_least_fp32(y_real)).abs()
        return error.mean(dim=dims, keepdim=True).clamp_min(MIN_WEIGHT)


def sid_generator_loss(y_real: torch.Tensor, y_fake: torch.Tensor, x_g: torch.Tensor,
                       alpha: float = 1.0) -> torch.Tensor:
    """L_G = (1/B) Σ (y_real - y_fake)·((y_real - x_g) - α·(y_real - y_fake)) / w.

    ``y_real`` = f_φ^{κ4}(x_t), ``y_fake`` = f_ψ^{κ2}(x_t) on the same x_t; gradients
    reach x_g both directly and through x_t. α = 1 (SiD-LSG) reduces the bracket to
    (y_fake - x_g); SiD on EDM used α = 1.2.
    """
    y_real, y_fake, x_g = (_at_least_fp32(v) for v in (y_real, y_fake, x_g))
    w = sid_weight(x_g, y_real)
    diff = y_real - y_fake
    return _per_sample_sum(diff * ((y_real - x_g) - alpha * diff) / w).mean()
