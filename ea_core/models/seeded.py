"""Torch layers whose randomness comes from an explicit `torch.Generator`.

Why: torch's default generator is process-wide. Seeding it (`torch.manual_seed`) inside `fit`
resets the caller's random state, and two fits in two threads draw from (and reseed) the same
generator, so neither is reproducible. Layers built here take their initial weights and dropout
masks from a generator the model owns instead.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn


class SeededDropout(nn.Module):
    """`nn.Dropout` drawing its masks from `self.generator` (set for the duration of a fit).

    Without a generator it falls back to torch's global one, like `nn.Dropout`. No parameters,
    so a head saved with `nn.Dropout` loads into it unchanged (and vice versa).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability must be in [0, 1], not {p!r}")
        self.p = float(p)
        self.generator: Optional[torch.Generator] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def uninitialised_linear(fan_in: int, fan_out: int) -> nn.Linear:
    """An `nn.Linear` built without drawing from torch's global generator (weights unset)."""
    return nn.utils.skip_init(nn.Linear, fan_in, fan_out)


def init_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """torch's default `nn.Linear` initialisation (kaiming-uniform with a=sqrt(5), i.e. weights and
    bias uniform in +-1/sqrt(fan_in)), drawn from `generator`."""
    bound = 1.0 / math.sqrt(layer.weight.shape[1]) if layer.weight.shape[1] > 0 else 0.0
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=generator)


def set_generator(module: nn.Module, generator: Optional[torch.Generator]) -> None:
    """Point every `SeededDropout` inside `module` at `generator` (None: torch's global one)."""
    for layer in module.modules():
        if isinstance(layer, SeededDropout):
            layer.generator = generator
