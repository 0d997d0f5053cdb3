"""PLE head forward + backward: samples/s and achieved GFLOP/s.

Contenders, at the same shapes and batch:

* ``ple``: this project's ``torchrec_ple.modules.PLE`` (fused / stacked expert layers);
* ``looped``: the same math with ``nn.Linear`` experts and gates in Python loops, the way
  DeepCTR-Torch and torch-rechub write it (written here; checked equal to ``ple`` with the
  same weights);
* ``mm``: the practical limit: the same matmul work as plain ``torch.mm`` calls on
  contiguous, preallocated tensors (per linear layer: ``x @ W`` forward, ``dy @ W^T`` and
  ``x^T @ dy`` backward).

FLOPs are counted analytically over the linear layers of experts and gates:
``2 * B * in * out`` per layer forward, times 3 for forward + backward (gate softmax, expert
mixtures and activations are not counted). Target: ``ple`` >= 40% of ``mm``'s GFLOP/s.

    python -m benchmarks.head [--quick] [--threads N] [--rounds R] [--batch B]
"""

# ruff: noqa: E402
# Before torch: the package chooses OMP_WAIT_POLICY (read when libgomp loads) unless set.
import torchrec_ple  # noqa: F401

# isort: split
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from benchmarks.common import (
    alternate,
    apply_threads,
    base_parser,
    fmt,
    markdown_table,
    median,
    out_path,
    paired_ratio,
    target_line,
    thread_line,
    time_rate,
    write_json,
)
from torchrec_ple.modules import PLE

TARGET_OF_MM = 0.40


@dataclass
class HeadConfig:
    """Sizes of one PLE head."""

    name: str
    in_features: int
    num_tasks: int
    num_levels: int
    num_shared_experts: int
    num_task_experts: int
    expert_dims: List[int]


CONFIGS = [
    # The PLE: input 7 numeric + 32 * 8 embedding = 263.
    HeadConfig("census", 263, 2, 2, 1, 1, [64, 32]),
    HeadConfig("big", 263, 4, 2, 2, 2, [256, 128]),
]


def linear_shapes(c: HeadConfig) -> List[Tuple[int, int]]:
    """(in, out) of every linear layer of the head: experts' layers, then gates."""
    shapes: List[Tuple[int, int]] = []
    width = c.in_features
    num_experts = c.num_tasks * c.num_task_experts + c.num_shared_experts
    for j in range(c.num_levels):
        for _ in range(num_experts):
            w = width
            for d in c.expert_dims:
                shapes.append((w, d))
                w = d
        shapes += [(width, c.num_task_experts + c.num_shared_experts)] * c.num_tasks
        if j < c.num_levels - 1 and c.num_shared_experts > 0:
            shapes.append((width, num_experts))
        width = c.expert_dims[-1]
    return shapes


def train_flops(c: HeadConfig, batch: int) -> int:
    """Matmul FLOPs of one forward + backward (3 matmuls of ``2 * B * in * out`` a layer)."""
    return sum(3 * 2 * batch * i * o for i, o in linear_shapes(c))


# ----------------------------------------------------------------------------- looped PLE


def _mlp(in_features: int, dims: List[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for d in dims:
        layers += [nn.Linear(in_features, d), nn.ReLU()]
        in_features = d
    return nn.Sequential(*layers)


class LoopedLevel(nn.Module):
    """One CGC level with a Python loop over experts and gates (DeepCTR / rechub style)."""

    def __init__(
        self, d: int, k: int, m_s: int, m_t: int, dims: List[int], shared_gate: bool
    ) -> None:
        super().__init__()
        self.task_experts = nn.ModuleList(
            [nn.ModuleList([_mlp(d, dims) for _ in range(m_t)]) for _ in range(k)]
        )
        self.shared_experts = nn.ModuleList([_mlp(d, dims) for _ in range(m_s)])
        self.task_gates = nn.ModuleList([nn.Linear(d, m_t + m_s) for _ in range(k)])
        self.shared_gate = nn.Linear(d, k * m_t + m_s) if shared_gate else None

    def forward(
        self, task_in: List[torch.Tensor], shared_in: torch.Tensor
    ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        shared_out = [e(shared_in) for e in self.shared_experts]
        task_out = [[e(task_in[k]) for e in ex] for k, ex in enumerate(self.task_experts)]
        outs: List[torch.Tensor] = []
        for k, gate in enumerate(self.task_gates):
            experts = torch.stack(task_out[k] + shared_out, dim=1)  # (B, n, H)
            weights = torch.softmax(gate(task_in[k]), dim=-1).unsqueeze(-1)
            outs.append((weights * experts).sum(dim=1))
        mixed = None
        if self.shared_gate is not None:
            experts = torch.stack([o for t in task_out for o in t] + shared_out, dim=1)
            weights = torch.softmax(self.shared_gate(shared_in), dim=-1).unsqueeze(-1)
            mixed = (weights * experts).sum(dim=1)
        return outs, mixed


class LoopedPLE(nn.Module):
    """PLE written with loops over levels, tasks and experts."""

    def __init__(self, c: HeadConfig) -> None:
        super().__init__()
        levels = []
        width = c.in_features
        for j in range(c.num_levels):
            shared_gate = j < c.num_levels - 1 and c.num_shared_experts > 0
            levels.append(
                LoopedLevel(
                    width,
                    c.num_tasks,
                    c.num_shared_experts,
                    c.num_task_experts,
                    c.expert_dims,
                    shared_gate,
                )
            )
            width = c.expert_dims[-1]
        self.levels = nn.ModuleList(levels)
        self.num_tasks = c.num_tasks

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        task_in = [x] * self.num_tasks
        shared_in: Optional[torch.Tensor] = x
        for level in self.levels:
            assert shared_in is not None or level.shared_gate is None
            task_in, shared_in = level(task_in, shared_in if shared_in is not None else x)
        return task_in


@torch.no_grad()
def copy_weights(src: PLE, dst: LoopedPLE, c: HeadConfig) -> None:
    """Give the looped PLE the project PLE's weights (through its parameter slices)."""

    def load(linears: List[nn.Linear], slices: List[Tuple[torch.Tensor, object]]) -> None:
        pairs = list(zip(slices[0::2], slices[1::2]))
        assert len(pairs) == len(linears)
        for lin, ((w, wi), (b, bi)) in zip(linears, pairs):
            lin.weight.copy_(w[wi].T)
            lin.bias.copy_(b[bi])

    for j, level in enumerate(dst.levels):
        for k in range(c.num_tasks):
            for i, e in enumerate(level.task_experts[k]):
                linears = [m for m in e if isinstance(m, nn.Linear)]
                load(linears, src.expert_parameter_slices(j, k, i))
            load([level.task_gates[k]], src.gate_parameter_slices(j, k))
        for i, e in enumerate(level.shared_experts):
            linears = [m for m in e if isinstance(m, nn.Linear)]
            load(linears, src.expert_parameter_slices(j, None, i))
        if level.shared_gate is not None:
            load([level.shared_gate], src.gate_parameter_slices(j, None))


def equivalence(ple: PLE, c: HeadConfig) -> Dict[str, object]:
    """Max |difference| between ``ple`` and the looped PLE with the same weights."""
    try:
        looped = LoopedPLE(c)
        copy_weights(ple, looped, c)
        x = torch.randn(64, c.in_features)
        with torch.no_grad():
            diff = max(float((a - b).abs().max()) for a, b in zip(ple(x), looped(x), strict=True))
        return {"equal": diff < 1e-4, "max_abs_diff": diff}
    except Exception as e:  # noqa: BLE001 - reported, the timing still runs
        return {"equal": False, "error": f"{type(e).__name__}: {e}"}


# ----------------------------------------------------------------------------- contenders


def module_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One forward + backward of a head (gradients reset to None first)."""
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        x.grad = None
        outs = model(x)
        loss = outs[0].sum()
        for o in outs[1:]:
            loss = loss + o.sum()
        loss.backward()

    return step


def mm_step(shapes: List[Tuple[int, int]], batch: int) -> Callable[[], None]:
    """The same matmuls as plain ``torch.mm`` calls on contiguous preallocated tensors."""
    bufs = []
    for i, o in shapes:
        bufs.append(
            (
                torch.randn(batch, i),  # x
                torch.randn(i, batch),  # x^T
                torch.randn(i, o),  # W
                torch.randn(o, i),  # W^T
                torch.randn(batch, o),  # dy
                torch.empty(batch, o),  # y
                torch.empty(batch, i),  # dx
                torch.empty(i, o),  # dW
            )
        )

    def step() -> None:
        for x, xt, w, wt, dy, y, dx, dw in bufs:
            torch.mm(x, w, out=y)
            torch.mm(dy, wt, out=dx)
            torch.mm(xt, dy, out=dw)

    return step


def run_config(c: HeadConfig, batch: int, rounds: int, min_seconds: float) -> Dict[str, object]:
    """Measure the three contenders on one config, alternating in rounds."""
    torch.manual_seed(0)
    ple = PLE(
        c.in_features,
        c.num_tasks,
        num_levels=c.num_levels,
        num_shared_experts=c.num_shared_experts,
        num_task_experts=c.num_task_experts,
        expert_dims=list(c.expert_dims),
    )
    check = equivalence(ple, c)
    looped = LoopedPLE(c)
    x = torch.randn(batch, c.in_features, requires_grad=True)
    steps = {
        "ple": module_step(ple, x),
        "looped": module_step(looped, x),
        "mm": mm_step(linear_shapes(c), batch),
    }
    contenders = {n: (lambda s=s: time_rate(s, batch, min_seconds)) for n, s in steps.items()}
    print(f"\n{c.name}: {asdict(c)}, batch {batch}")
    rates = alternate(contenders, rounds)
    flops = train_flops(c, batch)
    out: Dict[str, object] = {
        "config": asdict(c),
        "batch": batch,
        "flops_per_step": flops,
        "equivalence": check,
        "samples_per_second": {n: r for n, r in rates.items()},
        "median_samples_per_second": {n: median(r) for n, r in rates.items()},
        "median_gflops": {n: median(r) / batch * flops / 1e9 for n, r in rates.items()},
        "ple_over_mm": paired_ratio(rates["ple"], rates["mm"]),
        "ple_over_looped": paired_ratio(rates["ple"], rates["looped"]),
        "looped_over_mm": paired_ratio(rates["looped"], rates["mm"]),
    }
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = base_parser("head", __doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="batch size (default 1024)")
    p.add_argument("--configs", default="census,big", help="comma list of: census, big")
    args = p.parse_args(argv)
    apply_threads(args.threads)
    batch = args.batch or (128 if args.quick else 1024)
    rounds = args.rounds or (3 if args.quick else 7)
    min_seconds = 0.05 if args.quick else 0.5
    print(thread_line())
    wanted = args.configs.split(",")
    results = [run_config(c, batch, rounds, min_seconds) for c in CONFIGS if c.name in wanted]

    rows = []
    for r in results:
        name = r["config"]["name"]  # type: ignore[index]
        sps, gf = r["median_samples_per_second"], r["median_gflops"]
        for n in ("ple", "looped", "mm"):
            of_mm = {"ple": r["ple_over_mm"], "looped": r["looped_over_mm"], "mm": 1.0}[n]
            vs_looped = r["ple_over_looped"] if n == "ple" else None
            rows.append(
                [
                    name,
                    n,
                    fmt(sps[n]),  # type: ignore[index]
                    fmt(gf[n], 1),  # type: ignore[index]
                    f"{100 * of_mm:.0f}%",  # type: ignore[operator]
                    fmt(vs_looped, 2) + ("x" if vs_looped else ""),
                ]
            )
    headers = ["config", "contender", "samples/s", "GFLOP/s", "% of mm (paired)", "ple / looped"]
    print()
    print(markdown_table(headers, rows))
    print()
    for r in results:
        eq = r["equivalence"]
        print(f"{r['config']['name']}: ple == looped with the same weights: {eq}")  # type: ignore[index]
        print(
            target_line(
                f"{r['config']['name']}: ple GFLOP/s as a share of mm",  # type: ignore[index]
                100 * r["ple_over_mm"],  # type: ignore[operator]
                100 * TARGET_OF_MM,
                "%",
            )
        )
    path = write_json(out_path("head", args), "head", args, {"results": results})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
