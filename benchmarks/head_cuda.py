"""CUDA check of the config-free heads (no torchrec needed): correctness against CPU, then speed.

Usage: ``python -m benchmarks.head_cuda [--out results/head_cuda.json]`` on a machine with a GPU.
For every architecture, the CUDA outputs and gradients must equal the CPU ones (fp32, same
weights) and every gate must sum to 1; then PLE forward+backward is timed against the same
matmuls as plain ``torch.mm`` (fp32 and bf16 autocast) at batch 8192.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any, Dict, List

import torch

from torchrec_ple.modules import HEADS, PLE, build_head


def _check(arch: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    head = build_head(
        arch, 96, 3, num_levels=2, num_shared_experts=2, num_task_experts=1, expert_dims=[64, 32]
    )
    x = torch.randn(257, 96)
    cpu_out, cpu_gates = head.forward_with_gates(x)
    sum(o.sum() for o in cpu_out).backward()
    cpu_grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    gpu = head.cuda()
    out, gates = gpu.forward_with_gates(x.cuda())
    sum(o.sum() for o in out).backward()
    max_out = max(float((a.detach().cpu() - b.detach()).abs().max()) for a, b in zip(out, cpu_out))
    max_grad = max(
        float((p.grad.cpu() - g).abs().max()) for p, g in zip(gpu.parameters(), cpu_grads)
    )
    gate_err = max((float((w.sum(1) - 1).abs().max()) for w in gates.values()), default=0.0)
    gate_match = max(
        (float((gates[k].cpu() - cpu_gates[k]).abs().max()) for k in gates), default=0.0
    )
    ok = max_out < 1e-4 and max_grad < 1e-3 and gate_err < 1e-5 and gate_match < 1e-5
    return {
        "arch": arch,
        "max_out_diff": max_out,
        "max_grad_diff": max_grad,
        "gate_sum_err": gate_err,
        "ok": ok,
    }


def _time(fn, iters: int = 50) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def _speed(
    batch: int, dims: List[int], tasks: int, shared: int, own: int, dtype: torch.dtype
) -> Dict[str, Any]:
    d_in = 263
    head = PLE(
        d_in, tasks, num_levels=2, num_shared_experts=shared, num_task_experts=own, expert_dims=dims
    ).cuda()
    x = torch.randn(batch, d_in, device="cuda", requires_grad=False)
    n_exp = shared + tasks * own

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            outs = head(x)
            loss = sum(o.float().sum() for o in outs)
        loss.backward()

    # The same matmul work as plain mm chains: per level, every expert's layers + gates.
    widths = [d_in] + dims
    mats = []
    for level in range(2):
        for i in range(len(dims)):
            mats.append((widths[i] if not (level and i == 0) else dims[-1], dims[i] * n_exp))
    flops = sum(3 * 2 * batch * a * b for a, b in mats)
    ws = [torch.randn(a, b, device="cuda", dtype=dtype) for a, b in mats]
    xs = [torch.randn(batch, a, device="cuda", dtype=dtype) for a, _ in mats]

    def mm() -> None:
        for xi, w in zip(xs, ws):
            y = xi @ w
            xi.T @ y  # weight grad
            y @ w.T  # input grad

    t_head, t_mm = _time(step), _time(mm)
    return {
        "batch": batch,
        "expert_dims": dims,
        "tasks": tasks,
        "experts_per_level": n_exp,
        "dtype": str(dtype),
        "head_ms": t_head * 1e3,
        "mm_ms": t_mm * 1e3,
        "head_samples_per_s": batch / t_head,
        "head_gflops": flops / t_head / 1e9,
        "mm_gflops": flops / t_mm / 1e9,
        "head_vs_mm": t_mm / t_head,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/head_cuda.json"))
    args = p.parse_args()
    assert torch.cuda.is_available(), "needs a GPU"
    checks = [_check(a) for a in HEADS.names()]
    speed = [
        _speed(8192, [64, 32], 2, 1, 1, torch.float32),
        _speed(8192, [512, 256], 4, 2, 2, torch.float32),
        _speed(8192, [512, 256], 4, 2, 2, torch.bfloat16),
    ]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "checks": checks,
        "speed": speed,
    }
    print("| arch | max out diff | max grad diff | gate sum err | ok |\n|---|---|---|---|---|")
    for c in checks:
        print(
            f"| {c['arch']} | {c['max_out_diff']:.1e} | {c['max_grad_diff']:.1e} | {c['gate_sum_err']:.1e} | {c['ok']} |"
        )
    print(
        "\n| config | dtype | head ms | mm ms | head GFLOP/s | mm GFLOP/s | head/mm |\n|---|---|---|---|---|---|---|"
    )
    for s in speed:
        print(
            f"| B={s['batch']} {s['tasks']} tasks {s['experts_per_level']} experts {s['expert_dims']} | {s['dtype']} | "
            f"{s['head_ms']:.2f} | {s['mm_ms']:.2f} | {s['head_gflops']:.0f} | {s['mm_gflops']:.0f} | {s['head_vs_mm']:.0%} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if not all(c["ok"] for c in checks):
        raise SystemExit("CUDA results differ from CPU")


if __name__ == "__main__":
    main()
