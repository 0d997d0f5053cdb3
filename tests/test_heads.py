"""Every config-free multi-task head of ``torchrec_ple.modules``: forward, backward, gates,
tracing and scripting; the registry protocol; the gate-free baselines; training."""

import math
from typing import List, Tuple

import pytest
import torch
import torch.fx
from torch import nn

from tests.modules_helpers import D, grads, slices_grad, total
from torchrec_ple.modules import (
    CGC,
    HEADS,
    PLE,
    AsymmetricSharing,
    CrossStitch,
    CustomizedSharing,
    MultiLevelMMoE,
    MultiTaskHead,
    SharedBottom,
    SingleTask,
    Sluice,
    TaskTowers,
    build_head,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = sorted(HEADS.names())
GATED = ("mmoe", "ml_mmoe", "cgc", "ple")
DIMS = [8, 4]


def small_head(arch: str, num_tasks: int, **kwargs) -> MultiTaskHead:
    args = dict(
        num_levels=2, num_shared_experts=2, num_task_experts=1, expert_dims=DIMS, dropout=0.0
    )
    args.update(kwargs)
    return build_head(arch, D, num_tasks, **args)


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
