"""Behaviour of the config-free multi-task heads in ``torchrec_ple.modules``."""

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
from torchrec_ple.modules import (
    CGC,
    HEADS,
    MLP,
    PLE,
    AsymmetricSharing,
    CrossStitch,
    CustomizedSharing,
    ExtractionNetwork,
    MMoE,
    MultiLevelMMoE,
    MultiTaskHead,
    SharedBottom,
    SingleTask,
    Sluice,
    StackedLinear,
    StackedMLP,
    TaskTowers,
    build_head,
)

ARCHS = sorted(HEADS.names())
GATED = ("mmoe", "ml_mmoe", "cgc", "ple")
D = 6
DIMS = [8, 4]


@pytest.fixture(autouse=True)
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead (and on a busy machine,
    a lot of it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_head(arch: str, num_tasks: int, **kwargs) -> MultiTaskHead:
    args = dict(
        num_levels=2, num_shared_experts=2, num_task_experts=1, expert_dims=DIMS, dropout=0.0
    )
    args.update(kwargs)
    return build_head(arch, D, num_tasks, **args)


def total(outputs: List[torch.Tensor]) -> torch.Tensor:
    return sum((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() for y in outputs)


def grads(module: nn.Module, loss: torch.Tensor) -> Dict[nn.Parameter, torch.Tensor]:
    params = [p for p in module.parameters()]
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {p: (torch.zeros_like(p) if g is None else g) for p, g in zip(params, gs)}


def slices_grad(g: Dict[nn.Parameter, torch.Tensor], slices) -> torch.Tensor:
    return torch.cat([g[p][idx].flatten() for p, idx in slices])


# --------------------------------------------------------------------------- every head


@pytest.mark.parametrize("num_tasks", [1, 2, 4])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_shapes(arch: str, num_tasks: int) -> None:
    torch.manual_seed(0)
    head = small_head(arch, num_tasks)
    assert isinstance(head, HEADS.get(arch))
    assert head.num_tasks == num_tasks and head.in_features == D
    assert len(head.output_dims) == num_tasks
    for batch in (1, 3):
        x = torch.randn(batch, D, requires_grad=True)
        outputs = head(x)
        assert isinstance(outputs, list) and len(outputs) == num_tasks
        for y, width in zip(outputs, head.output_dims):
            assert y.shape == (batch, width)
            assert torch.isfinite(y).all()
        head.zero_grad()
        total(outputs).backward()
        assert x.grad is not None and x.grad.shape == (batch, D)
        # No dead parameter: every parameter takes part in the forward pass (DDP-safe).
        for name, p in head.named_parameters():
            assert p.grad is not None, f"{arch}: {name} got no gradient"


@pytest.mark.parametrize("arch", ARCHS)
def test_gates_reported_only_by_gated_heads(arch: str) -> None:
    head = small_head(arch, 2)
    outputs, gates = head.forward_with_gates(torch.randn(3, D))
    assert len(outputs) == 2
    assert bool(gates) == (arch in GATED) == HEADS.get(arch).has_gates
    for w in gates.values():
        assert w.shape[0] == 3
        torch.testing.assert_close(w.sum(-1), torch.ones(3))


class _Wrapper(nn.Module):
    """A model around a head, iterating its list output as a tower stack would."""

    def __init__(self, head: MultiTaskHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.head(x)
        parts = []
        for k, y in enumerate(outs):
            parts.append(y * (k + 1))
        return torch.cat(parts, dim=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_fx_symbolic_trace(arch: str) -> None:
    torch.manual_seed(0)
    model = _Wrapper(small_head(arch, 3, num_levels=3)).eval()
    traced = torch.fx.symbolic_trace(model)
    for batch in (1, 5):
        x = torch.randn(batch, D)
        torch.testing.assert_close(traced(x), model(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_torchscript(arch: str) -> None:
    torch.manual_seed(0)
    head = small_head(arch, 2, num_levels=3).eval()
    scripted = torch.jit.script(head)
    x = torch.randn(4, D)
    for a, b in zip(scripted(x), head(x)):
        torch.testing.assert_close(a, b)
    if arch in GATED:
        outputs, gates = scripted.forward_with_gates(x)
        expected_outputs, expected_gates = head.forward_with_gates(x)
        assert list(gates) == list(expected_gates)
        for key in gates:
            torch.testing.assert_close(gates[key], expected_gates[key])


@pytest.mark.parametrize("arch", ["ple", "cgc", "sluice", "cross_stitch"])
def test_dropout_only_in_training(arch: str) -> None:
    torch.manual_seed(0)
    head = small_head(arch, 2, dropout=0.5)
    x = torch.randn(16, D)
    head.eval()
    torch.testing.assert_close(head(x)[0], head(x)[0])
    head.train()
    assert not torch.equal(head(x)[0], head(x)[0])


def test_registry_matches_spec_names() -> None:
    # in this order: `compare --architectures all` and the spec's messages list them so
    assert HEADS.names() == [
        "single_task",
        "shared_bottom",
        "asymmetric",
        "customized",
        "cross_stitch",
        "sluice",
        "mmoe",
        "ml_mmoe",
        "cgc",
        "ple",
    ]
    for name in HEADS.names():
        assert issubclass(HEADS.get(name), MultiTaskHead)
    assert [a for a in HEADS.names() if HEADS.get(a).has_gates] == list(GATED)


def test_build_head_maps_uniform_kwargs() -> None:
    kw = dict(expert_dims=[8, 4], activation="tanh", dropout=0.0)
    ple = build_head("ple", D, 3, num_levels=3, num_shared_experts=2, num_task_experts=1, **kw)
    assert isinstance(ple, PLE) and ple.num_levels == 3
    assert ple.expert_index(0, None, 1) == 3 * 1 + 1
    cgc = build_head("cgc", D, 2, num_levels=5, num_shared_experts=3, num_task_experts=2, **kw)
    assert isinstance(cgc, CGC) and cgc.num_levels == 1
    _, gates = cgc.forward_with_gates(torch.randn(2, D))
    assert gates["level0/task1"].shape == (2, 5)
    mmoe = build_head("mmoe", D, 2, num_shared_experts=5, num_task_experts=3, **kw)
    assert mmoe.forward_with_gates(torch.randn(2, D))[1]["level0/task0"].shape == (2, 5)
    ml = build_head("ml_mmoe", D, 2, num_levels=3, num_shared_experts=2, **kw)
    assert isinstance(ml, MultiLevelMMoE) and ml.num_levels == 3
    asym = build_head("asymmetric", D, 3, source_task=2, **kw)
    assert isinstance(asym, AsymmetricSharing) and asym.source_task == 2
    assert asym.output_dims == [8, 8, 4]
    sluice = build_head("sluice", D, 2, num_subspaces=4, **kw)
    assert sluice.alpha_parameters()[0].shape == (8, 8)
    with pytest.raises(ValueError, match="unknown architecture 'moe'.*mmoe"):
        build_head("moe", D, 2)


# ------------------------------------------------------------ the registry protocol


@pytest.mark.parametrize("arch", ARCHS)
def test_gate_layout_names_every_gate_column(arch: str) -> None:
    head = small_head(arch, 2)
    layout = head.gate_layout(["ctr", "cvr"])
    _, gates = head.forward_with_gates(torch.randn(3, D))
    assert list(layout) == list(gates)
    for key, w in gates.items():
        assert len(layout[key]) == w.shape[1], key


def test_gate_layout_orders_own_then_shared_experts() -> None:
    ple = small_head("ple", 2)  # 2 levels, 2 shared experts, 1 per task
    task0, shared = ["ctr/0", "shared/0", "shared/1"], ["ctr/0", "cvr/0", "shared/0", "shared/1"]
    assert ple.gate_layout(["ctr", "cvr"]) == {
        "level0/task0": task0,
        "level0/task1": ["cvr/0", "shared/0", "shared/1"],
        "level0/shared": shared,
        "level1/task0": task0,
        "level1/task1": ["cvr/0", "shared/0", "shared/1"],
    }
    mmoe = small_head("mmoe", 2)  # its experts are all shared: task_experts is not used
    assert mmoe.gate_layout(["a", "b"])["level0/task1"] == ["shared/0", "shared/1"]
    with pytest.raises(ValueError, match="1 task names for 2 tasks"):
        ple.gate_layout(["ctr"])


@pytest.mark.parametrize("arch", ARCHS)
def test_from_spec_builds_what_build_head_builds(arch: str) -> None:
    from torchrec_ple.spec.schema import ModelSpec

    model = ModelSpec(architecture=arch, levels=3, shared_experts=2, expert_dims=[8, 4])
    torch.manual_seed(0)
    head = HEADS.get(arch).from_spec(D, 2, model)
    torch.manual_seed(0)
    same = build_head(arch, D, 2, num_levels=3, num_shared_experts=2, expert_dims=[8, 4])
    assert type(head) is type(same) and head.output_dims == same.output_dims
    for (name, a), (_, b) in zip(head.state_dict().items(), same.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    assert model.expert_dims == [8, 4]  # the head has its own copy


def test_model_keys_declare_what_each_head_reads() -> None:
    common = ["expert_dims", "activation", "dropout"]
    assert HEADS.get("shared_bottom").model_keys() == common
    assert HEADS.get("mmoe").model_keys() == common + ["shared_experts"]
    assert HEADS.get("ml_mmoe").model_keys() == common + ["shared_experts", "levels"]
    assert HEADS.get("cgc").model_keys() == common + ["shared_experts", "task_experts"]
    assert HEADS.get("ple").model_keys() == common + ["levels", "shared_experts", "task_experts"]


class _Reporter:
    def __init__(self) -> None:
        self.errors: List[Tuple] = []

    def err(self, path, expected, found=None, *, did_you_mean=None, hint=None) -> None:
        self.errors.append((path[-1], expected, found, hint))


NO_SHARED = ("shared_experts", "shared_experts >= 1", "0", "MMoE experts are all shared")
NO_TASK_GATE = (
    "task_experts",
    "task_experts + shared_experts >= 1",
    "0 + 0",
    "a task gate with no expert",
)
NO_LOWER_SHARED_GATE = (
    "shared_experts",
    "shared_experts >= 1 for ple with levels > 1",
    "0",
    "the shared gate of a lower level would be a gate with no expert",
)
NO_EXPERT = ("shared_experts", "shared_experts + task_experts >= 1", "0 + 0", "no expert at all")


@pytest.mark.parametrize(
    "arch,levels,shared,task,expected",
    [
        ("mmoe", 1, 0, 1, [NO_SHARED]),
        ("ml_mmoe", 2, 0, 3, [NO_SHARED]),
        ("mmoe", 1, 1, 0, []),
        ("cgc", 2, 0, 0, [NO_TASK_GATE]),
        ("cgc", 2, 0, 1, []),  # cgc has one level whatever model.levels says
        ("ple", 2, 0, 1, [NO_LOWER_SHARED_GATE]),
        ("ple", 1, 0, 1, []),
        ("ple", 2, 0, 0, [NO_TASK_GATE]),
        ("single_task", 2, 0, 0, [NO_EXPERT]),
        ("sluice", 2, 0, 1, []),
    ],
)
def test_check_spec_reports_expert_counts(
    arch: str, levels: int, shared: int, task: int, expected: List[Tuple]
) -> None:
    from torchrec_ple.spec.schema import ModelSpec

    model = ModelSpec(architecture=arch, levels=levels, shared_experts=shared, task_experts=task)
    reporter = _Reporter()
    HEADS.get(arch).check_spec(reporter, ("model",), model)
    assert reporter.errors == expected


def test_matching_overrides_give_mmoe_the_experts_of_ple() -> None:
    from torchrec_ple.spec.schema import ModelSpec

    model = ModelSpec(shared_experts=1, task_experts=2)
    for arch in ("mmoe", "ml_mmoe"):
        assert HEADS.get(arch).matching_overrides(model, 3) == [("model.shared_experts", 7)]
    model = ModelSpec(shared_experts=0, task_experts=0)
    assert HEADS.get("mmoe").matching_overrides(model, 3) == [("model.shared_experts", 1)]
    assert HEADS.get("ple").matching_overrides(model, 3) == []


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


@pytest.mark.parametrize(
    "num_tasks,num_levels,m_s,m_t", [(2, 2, 1, 1), (3, 3, 2, 2), (1, 2, 3, 0), (4, 3, 0, 2)]
)
def test_ple_matches_looped_reference(num_tasks: int, num_levels: int, m_s: int, m_t: int) -> None:
    torch.manual_seed(1)
    net = PLE(
        7,
        num_tasks,
        num_levels=num_levels,
        num_shared_experts=m_s,
        num_task_experts=m_t,
        expert_dims=[6, 5, 4],
    )
    for batch in (1, 9):
        _assert_matches_reference(net, torch.randn(batch, 7), num_tasks, num_levels, m_s, m_t)


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


# ----------------------------------------------------------------- gate-free baselines


def test_single_task_isolation() -> None:
    torch.manual_seed(0)
    head = SingleTask(D, 3, expert_dims=[5, 4], activation="tanh")
    assert isinstance(head, SingleTask)
    outputs = head(torch.randn(8, D))
    for k in range(3):
        g = grads(head, total([outputs[k]]))
        for j in range(3):
            gj = slices_grad(g, head.task_parameter_slices(j))
            if j == k:
                assert gj.abs().sum() > 0
            else:
                assert torch.count_nonzero(gj) == 0


def test_shared_bottom_is_hard_sharing() -> None:
    head = SharedBottom(D, 3, expert_dims=[5, 4])
    outputs = head(torch.randn(2, D))
    assert all(torch.equal(outputs[0], y) for y in outputs)
    assert sum(p.numel() for p in head.parameters()) == (D * 5 + 5) + (5 * 4 + 4)


def test_asymmetric_sharing() -> None:
    torch.manual_seed(0)
    head = AsymmetricSharing(D, 3, expert_dims=[5, 4], source_task=1, activation="tanh")
    assert head.output_dims == [8, 4, 8]
    outputs = head(torch.randn(3, D))
    torch.testing.assert_close(outputs[0][:, 4:], outputs[1])
    torch.testing.assert_close(outputs[2][:, 4:], outputs[1])
    # The source features are not detached: task 0's loss reaches the source bottom.
    g = grads(head, total([outputs[0][:, 4:]]))
    bottoms = head._bottoms
    assert slices_grad(g, bottoms.mlp_parameter_slices(1)).abs().sum() > 0
    assert torch.count_nonzero(slices_grad(g, bottoms.mlp_parameter_slices(2))) == 0
    single = AsymmetricSharing(D, 1, expert_dims=[4])
    assert single.output_dims == [4]


def test_customized_sharing() -> None:
    torch.manual_seed(0)
    head = CustomizedSharing(D, 2, expert_dims=[5, 4], shared_dims=[6, 3])
    assert head.output_dims == [7, 7]
    outputs = head(torch.randn(3, D))
    torch.testing.assert_close(outputs[0][:, :3], outputs[1][:, :3])  # the shared part
    assert not torch.allclose(outputs[0][:, 3:], outputs[1][:, 3:])
    assert CustomizedSharing(D, 2, expert_dims=[5, 4]).output_dims == [8, 8]


def _near_identity_ok(alpha: torch.Tensor) -> None:
    n = alpha.shape[0]
    if n == 1:
        assert alpha.item() == 1.0
        return
    torch.testing.assert_close(alpha.diagonal(), torch.full((n,), 0.9))
    torch.testing.assert_close(alpha.sum(1), torch.ones(n))


def test_cross_stitch_matches_reference_and_trains_alpha() -> None:
    torch.manual_seed(0)
    num_tasks = 3
    head = CrossStitch(D, num_tasks, expert_dims=[5, 4])
    alphas = head.stitch_parameters()
    assert [a.shape for a in alphas] == [(3, 3), (3, 3)]
    for a in alphas:
        _near_identity_ok(a.detach())
    with torch.no_grad():
        for a in alphas:
            a.add_(0.05 * torch.randn_like(a))
    x = torch.randn(5, D)
    # Reference: columns as explicit per-task layers, stitched with explicit sums.
    cols = [head.column_parameter_slices(k) for k in range(num_tasks)]
    h = [x] * num_tasks
    for layer, alpha in enumerate(alphas):
        h = [
            torch.relu(
                h[k] @ cols[k][2 * layer][0][cols[k][2 * layer][1]]
                + cols[k][2 * layer + 1][0][cols[k][2 * layer + 1][1]]
            )
            for k in range(num_tasks)
        ]
        h = [sum(alpha[k, m] * h[m] for m in range(num_tasks)) for k in range(num_tasks)]
    outputs = head(x)
    for y, r in zip(outputs, h):
        torch.testing.assert_close(y, r)
    g = grads(head, total(outputs))
    for a in alphas:
        assert torch.count_nonzero(g[a]) == a.numel()
    _near_identity_ok(CrossStitch(D, 1, expert_dims=[4]).stitch_parameters()[0].detach())


def test_sluice_matches_reference_and_trains_alpha_beta() -> None:
    torch.manual_seed(0)
    num_tasks, s = 2, 2
    head = Sluice(D, num_tasks, expert_dims=[8, 6, 4], num_subspaces=s, activation="tanh")
    alphas = head.alpha_parameters()
    assert [a.shape for a in alphas] == [(4, 4)] * 3
    for a in alphas:
        _near_identity_ok(a.detach())
    assert head.beta.shape == (num_tasks, 3)
    torch.testing.assert_close(head.beta.detach()[:, -1], torch.full((2,), 0.9))
    with torch.no_grad():
        for a in alphas:
            a.add_(0.05 * torch.randn_like(a))
        head.beta.add_(0.05 * torch.randn_like(head.beta))
    x = torch.randn(5, D)
    # Reference with explicit loops over tasks and subspaces.
    h = [x] * num_tasks
    out = [0.0] * num_tasks
    for li, layer in enumerate(head._layers):
        lin = layer._linear
        h = [torch.tanh(h[k] @ lin.weight[:, k, :] + lin.bias[k]) for k in range(num_tasks)]
        width = h[0].shape[1] // s
        subs = [h[k][:, q * width : (q + 1) * width] for k in range(num_tasks) for q in range(s)]
        alpha = alphas[li]
        mixed = [sum(alpha[r, q] * subs[q] for q in range(len(subs))) for r in range(len(subs))]
        h = [torch.cat(mixed[k * s : (k + 1) * s], dim=1) for k in range(num_tasks)]
        for k in range(num_tasks):
            p = h[k] if layer._projection is None else h[k] @ layer._projection.weight[:, k, :]
            out[k] = out[k] + head.beta[k, li] * p
    outputs = head(x)
    for y, r in zip(outputs, out):
        torch.testing.assert_close(y, r)
    g = grads(head, total(outputs))
    for a in alphas:
        assert torch.count_nonzero(g[a]) == a.numel()
    assert torch.count_nonzero(g[head.beta]) == head.beta.numel()


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


# ------------------------------------------------------------------------- training


def _synthetic_two_tasks(n: int, d: int, correlation: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The MMoE paper's synthetic regression pair with controllable task correlation."""
    gen = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(d, 2, generator=gen))[0].t()
    w1 = u[0]
    w2 = correlation * u[0] + math.sqrt(1 - correlation**2) * u[1]
    alpha, beta = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    x = torch.randn(n, d, generator=gen)
    ys = []
    for w in (w1, w2):
        z = x @ w
        ys.append(z + torch.sin(alpha * z[:, None] + beta).sum(1))
    y = torch.stack(ys, dim=1)
    return x, y + 0.1 * torch.randn(y.shape, generator=gen)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_lowers_loss(arch: str) -> None:
    torch.manual_seed(0)
    x, y = _synthetic_two_tasks(256, 8, correlation=0.5)
    head = build_head(
        arch, 8, 2, num_levels=2, num_shared_experts=2, num_task_experts=1, expert_dims=[16, 8]
    )
    towers = TaskTowers(head.output_dims, [8])
    model = nn.ModuleDict({"head": head, "towers": towers})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        preds = towers(head(x))
        return sum(nn.functional.mse_loss(p.squeeze(1), y[:, k]) for k, p in enumerate(preds))

    with torch.no_grad():
        initial = loss_fn().item()
    for _ in range(200):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = loss_fn().item()
    assert final < 0.3 * initial, (arch, initial, final)
