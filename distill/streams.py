"""Common random numbers: one random stream per role of the training loop.

Each role (each update's prompt draw, the prompt-dropout mask, and each update's z, t and ε)
has its own ``torch.Generator``, seeded from (seed, role), and every strategy draws every
role the same way: the dropout mask is drawn whether or not the strategy drops prompts (it is
applied only where it does). So lsg, cfg and none run with one seed see the same prompts,
the same z, the same t and the same ε in both updates at every iteration, and their
difference is the method's, not the luck of the draw: arms with one seed are paired by
construction (tests/test_streams.py). With one generator for everything, lsg's mask draw
shifted every later draw, so a seed paired nothing.

The streams are checkpointed together, so a resumed run continues bit-identically on CPU.
"""

from __future__ import annotations

import hashlib

import torch

ROLES = (
    "prompts_fake_score",  # the ψ update's prompt batch
    "prompts_generator",  # the G update's prompt batch
    "dropout",  # the ψ update's prompt-dropout mask (drawn always, applied where dropped)
    "z_fake_score", "t_fake_score", "noise_fake_score",  # the ψ update's z, t and ε
    "z_generator", "t_generator", "noise_generator",  # the G update's z, t and ε
)
STATE_PREFIX = "rng."  # checkpoint tensors: rng.<role>


def role_seed(seed: int, role: str) -> int:
    """A 63-bit seed for (seed, role): a hash, so neighbouring seeds share no stream."""
    digest = hashlib.blake2b(f"{seed}/{role}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


class Streams:
    """The loop's random streams for one seed, on one device (``streams["z_generator"]``)."""

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        self.seed = seed
        self._generators = {role: torch.Generator(device=device).manual_seed(role_seed(seed, role))
                            for role in ROLES}

    def __getitem__(self, role: str) -> torch.Generator:
        return self._generators[role]

    def state(self) -> dict[str, torch.Tensor]:
        return {STATE_PREFIX + role: g.get_state() for role, g in self._generators.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore every stream; KeyError names a role the tensors lack."""
        missing = [role for role in ROLES if STATE_PREFIX + role not in tensors]
        if missing:
            raise KeyError(f"no random-stream state for {', '.join(missing)}")
        for role, generator in self._generators.items():
            generator.set_state(tensors[STATE_PREFIX + role])
