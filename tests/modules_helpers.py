"""What tests/test_modules.py and tests/test_heads.py share: the input width and gradient
helpers."""

from typing import Dict, List

import torch
from torch import nn

D = 6


def total(outputs: List[torch.Tensor]) -> torch.Tensor:
    return sum((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() for y in outputs)


def grads(module: nn.Module, loss: torch.Tensor) -> Dict[nn.Parameter, torch.Tensor]:
    params = [p for p in module.parameters()]
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {p: (torch.zeros_like(p) if g is None else g) for p, g in zip(params, gs)}


def slices_grad(g: Dict[nn.Parameter, torch.Tensor], slices) -> torch.Tensor:
    return torch.cat([g[p][idx].flatten() for p, idx in slices])
