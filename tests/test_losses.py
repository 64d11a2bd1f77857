"""SiD's losses against hand-computed values, and their gradients against autograd."""

import pytest
import torch

from distill.losses import MIN_WEIGHT, fake_score_loss, sid_generator_loss, sid_weight


def _t(rows):
    # (B, C, H, W) = (2, 2, 1, 1): two samples of two elements each.
    return torch.tensor(rows, dtype=torch.float64).view(2, 2, 1, 1)


X_G = [[1.0, 2.0], [0.0, -1.0]]
Y_REAL = [[2.0, 2.0], [1.0, 1.0]]
Y_FAKE = [[1.5, 3.0], [0.0, 2.0]]


def test_fake_score_loss_sums_over_elements_and_averages_over_batch():
    eps = _t([[1.0, 2.0], [0.0, 0.0]])
    noise = _t([[0.0, 0.0], [1.0, -1.0]])
    # sample 1: 1 + 4 = 5; sample 2: 1 + 1 = 2; mean 3.5
    assert fake_score_loss(eps, noise).item() == pytest.approx(3.5)


def test_weight_is_mean_abs_error_per_sample_and_clipped():
    w = sid_weight(_t(X_G), _t(Y_REAL))
    assert w.flatten().tolist() == pytest.approx([0.5, 1.5])
    same = _t(X_G)
    assert sid_weight(same, same).flatten().tolist() == pytest.approx([MIN_WEIGHT, MIN_WEIGHT])


@pytest.mark.parametrize("alpha, expected", [
    # sample 1: w = .5, d = y_real - y_fake = (.5, -1), y_real - x_g = (1, 0)
    #   α=1:   d·(1-.5, 0+1)     = .25 - 1   = -.75 -> /w = -1.5
    #   α=1.2: d·(1-.6, 0+1.2)   = .2 - 1.2  = -1.0 -> /w = -2.0
    # sample 2: w = 1.5, d = (1, -1), y_real - x_g = (1, 2)
    #   α=1:   d·(0, 3)          = -3        -> /w = -2.0
    #   α=1.2: d·(-.2, 3.2)      = -.2 - 3.2 = -3.4 -> /w = -2.2667
    (1.0, (-1.5 - 2.0) / 2),
    (1.2, (-2.0 - 3.4 / 1.5) / 2),
])
def test_generator_loss_hand_computed(alpha, expected):
    loss = sid_generator_loss(_t(Y_REAL), _t(Y_FAKE), _t(X_G), alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_alpha_one_equals_the_simplified_lsg_form():
    torch.manual_seed(0)
    y_real, y_fake, x_g = (torch.randn(3, 2, 4, 4, dtype=torch.float64) for _ in range(3))
    w = (x_g - y_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    simplified = ((y_real - y_fake) * (y_fake - x_g) / w).flatten(1).sum(1).mean()
    assert sid_generator_loss(y_real, y_fake, x_g, 1.0).item() == pytest.approx(simplified.item())


def test_gradient_with_constant_targets_is_minus_difference_over_weight():
    # With y_real, y_fake fixed and w stop-gradient: dL/dx_g = -(y_real - y_fake) / (w B).
    x_g = _t(X_G).requires_grad_()
    sid_generator_loss(_t(Y_REAL), _t(Y_FAKE), x_g, 1.2).backward()
    expected = -(_t(Y_REAL) - _t(Y_FAKE)) / (_t([[0.5, 0.5], [1.5, 1.5]]) * 2)
    assert torch.allclose(x_g.grad, expected)


@pytest.mark.parametrize("alpha", [1.0, 1.2])
def test_gradient_through_targets_matches_autograd_of_written_formula(alpha):
    # y_real and y_fake depend on x_g (as through x_t in the loop); w must stay stop-gradient.
    torch.manual_seed(1)
    base = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    shift_real, shift_fake = torch.randn(2, 4, 3, 2, 2, dtype=torch.float64)

    def targets(x):
        return 0.7 * x + shift_real, torch.tanh(x) * 0.9 + shift_fake

    x1 = base.clone().requires_grad_()
    sid_generator_loss(*targets(x1), x1, alpha).backward()

    x2 = base.clone().requires_grad_()
    y_real, y_fake = targets(x2)
    w = (x2 - y_real).abs().mean(dim=(1, 2, 3), keepdim=True).detach()
    written = (y_real - y_fake) * ((y_real - x2) - alpha * (y_real - y_fake)) / w
    (written.sum() / x2.shape[0]).backward()
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)

    # Not stopping the gradient of w gives a different answer, so the check above can fail.
    x3 = base.clone().requires_grad_()
    y_real, y_fake = targets(x3)
    w = (x3 - y_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    ((y_real - y_fake) * ((y_real - x3) - alpha * (y_real - y_fake)) / w).sum().backward()
    assert not torch.allclose(x1.grad, x3.grad / x3.shape[0])


def test_low_precision_inputs_are_computed_in_float32():
    args = [_t(v).to(torch.bfloat16) for v in (Y_REAL, Y_FAKE, X_G)]
    loss = sid_generator_loss(*args)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(-1.75)
    assert fake_score_loss(args[0], args[1]).dtype == torch.float32
