"""The experts and gates of ``torchrec_ple.modules``: PLE's routing checked against a looped
reference, MMoE, the building blocks (stacked linears and MLPs, towers), bad configs."""

import math
import re
import textwrap
from typing import Dict, List, Optional, Tuple

import pytest
import torch
import torch.fx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import torchrec_ple.modules as mods
from tests.modules_helpers import D, grads, slices_grad, total
from torchrec_ple.modules import (
    CGC,
    MLP,
    PLE,
    AsymmetricSharing,
    CrossStitch,
    CustomizedSharing,
    ExtractionNetwork,
    MMoE,
    MultiLevelMMoE,
    SingleTask,
    Sluice,
    StackedLinear,
    StackedMLP,
    TaskTowers,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------ PLE: routing


def reference_extraction(
    net: ExtractionNetwork,
    x: torch.Tensor,
    num_tasks: int,
    num_levels: int,
    m_s: int,
    m_t: int,
    act=torch.relu,
) -> Tuple[List[torch.Tensor], Dict[str, torch.Tensor]]:
    """PLE written out with explicit loops over levels, tasks and experts (the paper's math)."""

    def expert(level: int, task: Optional[int], i: int, h: torch.Tensor) -> torch.Tensor:
        slices = net.expert_parameter_slices(level, task, i)
        for (w, w_idx), (b, b_idx) in zip(slices[0::2], slices[1::2]):
            h = act(h @ w[w_idx] + b[b_idx])
        return h

    def gate(level: int, task: Optional[int], h: torch.Tensor) -> torch.Tensor:
        (w, w_idx), (b, b_idx) = net.gate_parameter_slices(level, task)
        return torch.softmax(h @ w[w_idx] + b[b_idx], dim=-1)

    def mixture(weights: torch.Tensor, experts: List[torch.Tensor]) -> torch.Tensor:
        assert weights.shape[1] == len(experts)
        out = torch.zeros_like(experts[0])
        for i, e in enumerate(experts):
            out = out + weights[:, i : i + 1] * e
        return out

    task_in = [x] * num_tasks
    shared_in = x
    gates: Dict[str, torch.Tensor] = {}
    for j in range(num_levels):
        task_experts = [[expert(j, k, i, task_in[k]) for i in range(m_t)] for k in range(num_tasks)]
        shared_experts = [expert(j, None, s, shared_in) for s in range(m_s)]
        next_task_in = []
        for k in range(num_tasks):
            w = gate(j, k, task_in[k])
            gates[f"level{j}/task{k}"] = w
            next_task_in.append(mixture(w, task_experts[k] + shared_experts))
        if j < num_levels - 1 and m_s > 0:
            w = gate(j, None, shared_in)
            gates[f"level{j}/shared"] = w
            every = [e for per_task in task_experts for e in per_task] + shared_experts
            shared_in = mixture(w, every)
        task_in = next_task_in
    return task_in, gates


def _assert_matches_reference(net, x, num_tasks, num_levels, m_s, m_t, act=torch.relu) -> None:
    outputs, gates = net.forward_with_gates(x)
    ref_outputs, ref_gates = reference_extraction(net, x, num_tasks, num_levels, m_s, m_t, act)
    assert list(gates) == list(ref_gates) == net.gate_keys
    for y, r in zip(outputs, ref_outputs):
        torch.testing.assert_close(y, r, rtol=1e-5, atol=1e-5)
    for key in gates:
        torch.testing.assert_close(gates[key], ref_gates[key], rtol=1e-5, atol=1e-6)


def _small_ple(num_tasks: int, num_levels: int, m_s: int, m_t: int, dims: List[int]) -> PLE:
    """A 7-input PLE for the reference comparisons."""
    return PLE(
        7,
        num_tasks,
        num_levels=num_levels,
        num_shared_experts=m_s,
        num_task_experts=m_t,
        expert_dims=dims,
    )


@pytest.mark.parametrize(
    "num_tasks,num_levels,m_s,m_t", [(2, 2, 1, 1), (3, 3, 2, 2), (1, 2, 3, 0), (4, 3, 0, 2)]
)
def test_ple_matches_looped_reference(num_tasks: int, num_levels: int, m_s: int, m_t: int) -> None:
    torch.manual_seed(1)
    net = _small_ple(num_tasks, num_levels, m_s, m_t, [6, 5, 4])
    for batch in (1, 9):
        _assert_matches_reference(net, torch.randn(batch, 7), num_tasks, num_levels, m_s, m_t)


@pytest.mark.parametrize("num_tasks,num_levels,m_s,m_t", [(2, 2, 1, 1), (3, 3, 2, 2), (4, 3, 0, 2)])
def test_ple_gradients_match_looped_reference(
    num_tasks: int, num_levels: int, m_s: int, m_t: int
) -> None:
    """The fused levels' backward (softmax over the dense gate layout; the mixture as
    multiply-adds for 3 experts, as a bmm over rows for 8) gives every parameter and the input
    the gradient of the looped reference."""
    torch.manual_seed(2)
    net = _small_ple(num_tasks, num_levels, m_s, m_t, [6, 5])
    x = torch.randn(9, 7)
    weights = [torch.randn(9, 5) for _ in range(num_tasks)]

    def grads(outputs: List[torch.Tensor], inp: torch.Tensor) -> List[torch.Tensor]:
        loss = sum((y * w).sum() for y, w in zip(outputs, weights))
        return list(torch.autograd.grad(loss, [inp, *net.parameters()], allow_unused=True))

    x1 = x.clone().requires_grad_(True)
    fused = grads(net(x1), x1)
    x2 = x.clone().requires_grad_(True)
    ref_outputs, _ = reference_extraction(net, x2, num_tasks, num_levels, m_s, m_t, torch.relu)
    looped = grads(ref_outputs, x2)
    for a, b in zip(fused, looped):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_tasks=st.integers(1, 4),
    num_levels=st.integers(1, 3),
    m_s=st.integers(0, 3),
    m_t=st.integers(0, 3),
    depth=st.integers(1, 2),
    batch=st.integers(1, 4),
)
def test_ple_gates_property(num_tasks, num_levels, m_s, m_t, depth, batch) -> None:
    assume(m_s + m_t >= 1)
    torch.manual_seed(0)
    net = PLE(
        5,
        num_tasks,
        num_levels=num_levels,
        num_shared_experts=m_s,
        num_task_experts=m_t,
        expert_dims=[4, 3][:depth],
        activation="tanh",
    )
    x = torch.randn(batch, 5)
    outputs, gates = net.forward_with_gates(x)
    assert [y.shape for y in outputs] == [(batch, [4, 3][depth - 1])] * num_tasks

    expected = {}
    for j in range(num_levels):
        for k in range(num_tasks):
            expected[f"level{j}/task{k}"] = m_t + m_s  # own experts, then shared
        if j < num_levels - 1 and m_s > 0:
            expected[f"level{j}/shared"] = num_tasks * m_t + m_s  # every expert of the level
    assert {key: w.shape for key, w in gates.items()} == {
        key: (batch, n) for key, n in expected.items()
    }
    assert f"level{num_levels - 1}/shared" not in gates
    for w in gates.values():
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(batch))
    _assert_matches_reference(net, x, num_tasks, num_levels, m_s, m_t, torch.tanh)


@pytest.mark.parametrize("m_s", [0, 2])
def test_ple_routing_gradients(m_s: int) -> None:
    """Progressive separation: task k reads other tasks' experts only through shared gates."""
    torch.manual_seed(0)
    num_tasks, num_levels, m_t = 3, 3, 2
    net = PLE(
        5,
        num_tasks,
        num_levels=num_levels,
        num_shared_experts=m_s,
        num_task_experts=m_t,
        expert_dims=[6, 4],
        activation="tanh",
    )
    outputs = net(torch.randn(16, 5))
    last = num_levels - 1
    for k in range(num_tasks):
        g = grads(net, total([outputs[k]]))
        for j in range(num_levels):
            for t in range(num_tasks):
                for i in range(m_t):
                    expert_grad = slices_grad(g, net.expert_parameter_slices(j, t, i))
                    if t == k:
                        assert expert_grad.abs().sum() > 0
                    elif j == last or m_s == 0:
                        # The last level (and any level without shared experts) never lets
                        # task k see task t's experts.
                        assert torch.count_nonzero(expert_grad) == 0, (k, j, t, i)
                    else:
                        # Earlier levels reach task k through the shared gate (PLE's
                        # progressive extraction), so they do get gradient.
                        assert expert_grad.abs().sum() > 0
                gate_grad = slices_grad(g, net.gate_parameter_slices(j, t))
                if t == k:
                    assert gate_grad.abs().sum() > 0
                elif j >= num_levels - 2 or m_s == 0:
                    assert torch.count_nonzero(gate_grad) == 0, (k, j, t)
            for s in range(m_s):
                # Shared experts serve every task at every level.
                assert slices_grad(g, net.expert_parameter_slices(j, None, s)).abs().sum() > 0
            if j < last and m_s > 0:
                assert slices_grad(g, net.gate_parameter_slices(j, None)).abs().sum() > 0


@pytest.mark.parametrize("num_levels,m_s,m_t", [(1, 1, 1), (3, 2, 3), (2, 0, 2), (2, 3, 0)])
def test_ple_parameter_slices_partition_all_parameters(num_levels, m_s, m_t) -> None:
    num_tasks = 3
    net = PLE(
        5,
        num_tasks,
        num_levels=num_levels,
        num_shared_experts=m_s,
        num_task_experts=m_t,
        expert_dims=[6, 4, 3],
    )
    cover = {p: torch.zeros_like(p, dtype=torch.int32) for p in net.parameters()}
    for j in range(num_levels):
        owners: List[Optional[int]] = [t for t in range(num_tasks) for _ in range(m_t)]
        owners += [None] * m_s
        seen_index = {}
        for t, i in [(t, i) for t in range(num_tasks) for i in range(m_t)] + [
            (None, s) for s in range(m_s)
        ]:
            e = net.expert_index(j, t, i)
            assert owners[e] == t and e not in seen_index
            seen_index[e] = (t, i)
            slices = net.expert_parameter_slices(j, t, i)
            shapes = [p[idx].shape for p, idx in slices]
            width = 5 if j == 0 else 3
            assert shapes == [(width, 6), (6,), (6, 4), (4,), (4, 3), (3,)]
            for p, idx in slices:
                cover[p][idx] += 1
        gate_owners: List[Optional[int]] = list(range(num_tasks))
        if j < num_levels - 1 and m_s > 0:
            gate_owners.append(None)
        else:
            with pytest.raises(IndexError, match="no shared gate"):
                net.gate_parameter_slices(j, None)
        for t in gate_owners:
            (w, w_idx), (b, b_idx) = net.gate_parameter_slices(j, t)
            n = m_t + m_s if t is not None else num_tasks * m_t + m_s
            assert w[w_idx].shape == (5 if j == 0 else 3, n) and b[b_idx].shape == (n,)
            cover[w][w_idx] += 1
            cover[b][b_idx] += 1
    for c in cover.values():
        assert (c == 1).all(), "every parameter entry belongs to exactly one expert or gate"


def test_ple_init_like_linear() -> None:
    torch.manual_seed(0)
    net = PLE(50, 2, num_levels=2, num_shared_experts=2, num_task_experts=2, expert_dims=[30, 20])
    for j, fan_in in [(0, 50), (1, 20)]:
        layers = net.expert_parameter_slices(j, 1, 0)
        for (w, w_idx), (b, b_idx), fan in zip(layers[0::2], layers[1::2], [fan_in, 30]):
            bound = 1 / math.sqrt(fan)
            assert w[w_idx].abs().max() <= bound and w[w_idx].abs().max() > 0.8 * bound
            assert b[b_idx].abs().max() <= bound


def test_cgc_is_single_level_ple() -> None:
    kwargs = dict(num_shared_experts=2, num_task_experts=1, expert_dims=[5, 3])
    torch.manual_seed(3)
    cgc = CGC(6, 2, **kwargs)
    torch.manual_seed(3)
    ple = PLE(6, 2, num_levels=1, **kwargs)
    assert cgc.num_levels == 1 and isinstance(cgc, PLE)
    assert cgc.state_dict().keys() == ple.state_dict().keys()
    x = torch.randn(4, 6)
    for a, b in zip(cgc(x), ple(x)):
        torch.testing.assert_close(a, b)
    assert cgc.gate_keys == ["level0/task0", "level0/task1"]


def test_ple_gate_and_state_dict_keys() -> None:
    net = PLE(6, 2, num_levels=2, num_shared_experts=1, num_task_experts=1, expert_dims=[4])
    assert net.gate_keys == ["level0/task0", "level0/task1", "level0/shared"] + [
        "level1/task0",
        "level1/task1",
    ]
    # Index buffers are derived from the config, so they stay out of checkpoints.
    assert all("index" not in key for key in net.state_dict())


# ---------------------------------------------------------------------------- MMoE


def test_mmoe_gates_span_all_experts() -> None:
    torch.manual_seed(0)
    mmoe = MMoE(D, 3, num_experts=4, expert_dims=[5, 3])
    outputs, gates = mmoe.forward_with_gates(torch.randn(2, D))
    assert list(gates) == ["level0/task0", "level0/task1", "level0/task2"]
    assert all(w.shape == (2, 4) for w in gates.values())
    assert [y.shape for y in outputs] == [(2, 3)] * 3
    _assert_matches_reference(mmoe, torch.randn(3, D), 3, 1, 4, 0)


def test_multi_level_mmoe_structure() -> None:
    torch.manual_seed(0)
    net = MultiLevelMMoE(D, 2, num_experts=3, num_levels=3, expert_dims=[5])
    _, gates = net.forward_with_gates(torch.randn(2, D))
    assert list(gates) == [
        "level0/task0",
        "level0/task1",
        "level0/shared",
        "level1/task0",
        "level1/task1",
        "level1/shared",
        "level2/task0",
        "level2/task1",
    ]
    assert all(w.shape == (2, 3) for w in gates.values())
    _assert_matches_reference(net, torch.randn(3, D), 2, 3, 3, 0)


# ------------------------------------------------------------------ building blocks


@pytest.mark.parametrize("activate_last", [True, False])
def test_stacked_mlp_matches_independent_mlps(activate_last: bool) -> None:
    torch.manual_seed(0)
    stacked = StackedMLP(3, D, [5, 4], activation="gelu", activate_last=activate_last)
    per_input = StackedMLP(
        3, D, [5, 4], activation="gelu", activate_last=activate_last, shared_input=False
    )
    per_input.load_state_dict(stacked.state_dict())
    mlps = []
    for i in range(3):
        mlp = MLP(D, [5, 4], activation="gelu", activate_last=activate_last)
        linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
        slices = stacked.mlp_parameter_slices(i)
        with torch.no_grad():
            for lin, (w, w_idx), (b, b_idx) in zip(linears, slices[0::2], slices[1::2]):
                lin.weight.copy_(w[w_idx].t())
                lin.bias.copy_(b[b_idx])
        mlps.append(mlp)
    x = torch.randn(7, D)
    y = stacked(x)
    assert y.shape == (3, 7, 4) and stacked.output_dim == 4
    xs = torch.randn(3, 1, D)
    y_per = per_input(xs)
    for i in range(3):
        torch.testing.assert_close(y[i], mlps[i](x))
        torch.testing.assert_close(y_per[i], mlps[i](xs[i]))


def test_stacked_linear_init_and_layout() -> None:
    torch.manual_seed(0)
    lin = StackedLinear(4, 100, 10, shared_input=True)
    assert lin.weight.shape == (100, 4, 10) and lin.bias.shape == (4, 10)
    bound = 1 / math.sqrt(100)
    assert lin.weight.abs().max() <= bound and lin.bias.abs().max() <= bound
    x = torch.randn(3, 100)
    y = lin(x)
    torch.testing.assert_close(y[2], x @ lin.weight[:, 2, :] + lin.bias[2])
    no_bias = StackedLinear(2, 5, 3, bias=False)
    assert no_bias.bias is None and len(no_bias.parameter_slices(0)) == 1
    assert no_bias(torch.randn(2, 4, 5)).shape == (2, 4, 3)


def test_mlp_activate_last() -> None:
    mlp = MLP(D, [5, 3], activate_last=False)
    assert mlp.output_dim == 3
    assert not isinstance(list(mlp.modules())[-1], nn.ReLU)
    assert MLP(D, []).output_dim == D


@pytest.mark.parametrize(
    "in_dims,out_dims,stacked",
    [([4, 4, 4], None, True), ([4, 6], None, False), ([4, 4], [1, 3], False), ([5], [2], True)],
)
def test_task_towers(in_dims, out_dims, stacked) -> None:
    torch.manual_seed(0)
    towers = TaskTowers(in_dims, [8], out_dims)
    assert towers.stacked == stacked
    expected = [1] * len(in_dims) if out_dims is None else out_dims
    assert towers.output_dims == expected
    xs = [torch.randn(1, d) for d in in_dims]
    ys = towers(xs)
    assert [y.shape for y in ys] == [(1, o) for o in expected]
    total(ys).backward()
    assert all(p.grad is not None for p in towers.parameters())
    scripted = torch.jit.script(towers)
    traced = torch.fx.symbolic_trace(towers)
    for a, b, c in zip(scripted(xs), traced(xs), ys):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


def test_task_towers_without_hidden_layers_are_linear() -> None:
    towers = TaskTowers([4, 4], [], [2, 2])
    assert sum(p.numel() for p in towers.parameters()) == 2 * (4 * 2 + 2)


@pytest.mark.parametrize("name", sorted(n for n in mods.__all__ if callable(getattr(mods, n))))
def test_docstring_examples_run(name: str) -> None:
    obj = getattr(mods, name)
    match = re.search(r"Example::\n\n(.*?)(?:\n\s*\n(?!\s{8})|\Z)", obj.__doc__, re.S)
    assert match, f"{name} has no Example:: block"
    namespace = {"torch": torch, **{n: getattr(mods, n) for n in mods.__all__}}
    exec(textwrap.dedent(match.group(1)), namespace)


def test_modules_do_not_import_config_code() -> None:
    import sys

    for name, module in list(sys.modules.items()):
        if name.startswith("torchrec_ple.modules.") and module is not None:
            source = open(module.__file__).read()
            assert "torchrec_ple.spec" not in source, name
            assert "import torchrec\n" not in source and "from torchrec." not in source, name
    assert mods.__all__


# ---------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: PLE(D, 2, num_shared_experts=0, num_task_experts=0), "no expert"),
        (lambda: CGC(D, 2, num_shared_experts=0, num_task_experts=0), "no expert"),
        (lambda: PLE(D, 2, num_levels=0), "num_levels must be at least 1"),
        (lambda: PLE(D, 0), "num_tasks must be at least 1"),
        (lambda: PLE(0, 2), "in_features must be at least 1"),
        (lambda: PLE(D, 2, num_shared_experts=-1), "num_shared_experts must be >= 0"),
        (lambda: PLE(D, 2, num_task_experts=-2), "num_task_experts must be >= 0"),
        (lambda: PLE(D, 2, expert_dims=[]), "expert_dims must list at least one"),
        (lambda: PLE(D, 2, expert_dims=[4, 0]), "expert_dims must be positive"),
        (lambda: PLE(D, 2, activation="swish"), "unknown activation 'swish'.*relu"),
        (lambda: PLE(D, 2, dropout=1.0), r"dropout must be in \[0, 1\)"),
        (lambda: MMoE(D, 2, num_experts=0), "num_experts >= 1"),
        (lambda: MultiLevelMMoE(D, 2, num_experts=0), "num_experts >= 1"),
        (lambda: Sluice(D, 2, expert_dims=[6, 5], num_subspaces=2), r"divisible.*\[5\]"),
        (lambda: Sluice(D, 2, num_subspaces=0), "num_subspaces must be at least 1"),
        (lambda: AsymmetricSharing(D, 2, source_task=2), r"source_task .*\[0, 1\]"),
        (lambda: SingleTask(D, 2, expert_dims=[]), "expert_dims"),
        (lambda: CrossStitch(D, 0), "num_tasks"),
        (lambda: CustomizedSharing(D, 2, shared_dims=[]), "shared_dims"),
        (lambda: TaskTowers([4, 4], [8], [1]), "one width per tower"),
        (lambda: StackedMLP(0, D, [4]), "num_mlps"),
    ],
)
def test_invalid_configs_raise(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()
