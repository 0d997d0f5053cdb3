"""The ``plain`` check of ``benchmarks/gpu_check.sh``: a textbook PLE in plain PyTorch at the
sizes of ``feature_specs/synthetic.yaml``, trained on random batches already on the device;
its samples/s is the yardstick the project's GPU fit is measured against.

Run through ``python -m benchmarks.gpu_check plain [--device D] [--precision fp32|bf16] ...``.
"""

from __future__ import annotations

import time
from typing import Any, List, Tuple

import torch

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class PlainPLE(torch.nn.Module):
    """A textbook PLE in plain PyTorch (``nn.EmbeddingBag``, ``nn.Linear`` experts, softmax
    gates): the yardstick, at the sizes of ``feature_specs/synthetic.yaml``."""

    def __init__(self, dense: int, dim: int, tasks: int, dims: List[int], levels: int) -> None:
        super().__init__()
        nn = torch.nn
        self.users = nn.EmbeddingBag(2001, dim, mode="sum")
        self.items = nn.EmbeddingBag(20000, dim, mode="mean")
        self.tasks = tasks

        def mlp(d_in: int) -> Any:
            layers: List[Any] = []
            for d in dims:
                layers += [nn.Linear(d_in, d), nn.ReLU()]
                d_in = d
            return nn.Sequential(*layers)

        d_in = dense + 3 * dim
        self.levels = nn.ModuleList()
        for level in range(levels):
            width = d_in if level == 0 else dims[-1]
            self.levels.append(
                nn.ModuleDict(
                    {
                        "task": nn.ModuleList(mlp(width) for _ in range(tasks)),
                        "shared": mlp(width),
                        "gates": nn.ModuleList(nn.Linear(width, 2) for _ in range(tasks)),
                        "shared_gate": nn.Linear(width, tasks + 1),
                    }
                )
            )
        self.towers = nn.ModuleList(
            nn.Sequential(nn.Linear(dims[-1], 32), nn.ReLU(), nn.Linear(32, 1))
            for _ in range(tasks)
        )

    def forward(
        self, dense: torch.Tensor, user: torch.Tensor, item: torch.Tensor, hist: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, tasks) of dense (B, 16), user (B,), item (B,) and history (B, 8) ids."""
        b = dense.shape[0]
        x = torch.cat(
            [dense, self.users(user.view(b, 1)), self.items(item.view(b, 1)), self.items(hist)], 1
        )
        task_in, shared_in = [x] * self.tasks, x
        lv: Any
        for lv in self.levels:
            own = [e(t) for e, t in zip(lv["task"], task_in)]
            shared = lv["shared"](shared_in)
            task_in = [
                (torch.softmax(g(t), 1).unsqueeze(2) * torch.stack([o, shared], 1)).sum(1)
                for g, t, o in zip(lv["gates"], task_in, own)
            ]
            w = torch.softmax(lv["shared_gate"](shared_in), 1).unsqueeze(2)
            shared_in = (w * torch.stack([*own, shared], 1)).sum(1)
        return torch.cat([tw(t) for tw, t in zip(self.towers, task_in)], 1)


def random_batches(b: int, dev: torch.device, count: int = 8) -> List[Batch]:
    """``count`` random batches of ``b`` rows on ``dev``: dense (b, 16), user (b,), item (b,),
    history (b, 8) and labels (b, 3)."""
    return [
        (
            torch.randn(b, 16, device=dev),
            torch.randint(0, 2001, (b,), device=dev),
            torch.randint(0, 20000, (b,), device=dev),
            torch.randint(0, 20000, (b, 8), device=dev),
            torch.randint(0, 2, (b, 3), device=dev).float(),
        )
        for _ in range(count)
    ]


def plain_rate(device: str, batch: int, steps: int, precision: str) -> float:
    """Training samples per second of the plain-PyTorch PLE on random batches already on the
    device (no data path): the upper bound the project's fit is measured against.

    Args:
        device (str): ``cuda`` or ``cpu``.
        batch (int): rows per step.
        steps (int): timed steps (after 5 warm-up steps).
        precision (str): ``fp32``, or ``bf16`` under autocast.

    Returns:
        float: samples per second of the timed steps.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    model = PlainPLE(16, 16, 3, [64, 32], 2).to(dev)
    emb = [*model.users.parameters(), *model.items.parameters()]
    ids = {id(p) for p in emb}
    dense_params = [p for p in model.parameters() if id(p) not in ids]
    opts = [torch.optim.Adagrad(emb, lr=0.05), torch.optim.Adam(dense_params, lr=0.002)]
    batches = random_batches(batch, dev)
    autocast = precision == "bf16"

    def step(i: int) -> None:
        dense, user, item, hist, y = batches[i % len(batches)]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(dense, user, item, hist)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    for i in range(5):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)
