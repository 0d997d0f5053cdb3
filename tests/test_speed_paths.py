"""The fast paths of issue 16 behave like the simple code they replace.

* the OpenMP wait policy follows processes x threads vs cores, and never overrides the user;
* ``build_batch`` (one gather for every one-id-per-row column) builds the same
  KeyedJaggedTensor as a gather per column;
* the head's input is the pooled embeddings selected by name, whatever the key order the
  (sharded) collection returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from torchrec_ple import threads
from torchrec_ple.data.batch import BatchLoader, build_batch
from torchrec_ple.data.transforms import EncodedData, gather_jagged
from torchrec_ple.models.multitask import MultiTaskModel, _in_order
from torchrec_ple.modules import TaskTowers, build_head

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------------------ thread policy


@pytest.mark.parametrize(
    "env, cores, num_threads, busy, policy, threads_assumed",
    [
        ({}, 2, None, 0, "ACTIVE", 2),  # one process, torch's default: one thread per core
        ({"OMP_NUM_THREADS": "2"}, 2, None, 0, "ACTIVE", 2),
        ({"OMP_NUM_THREADS": "4"}, 2, None, 0, "PASSIVE", 4),
        ({"OMP_NUM_THREADS": "4,2"}, 2, None, 0, "PASSIVE", 4),  # nested list: first level
        ({"LOCAL_WORLD_SIZE": "2"}, 2, None, 0, "PASSIVE", 2),  # 2 x 2 > 2
        ({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}, 2, None, 0, "ACTIVE", 1),
        ({"LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "4"}, 16, None, 0, "ACTIVE", 4),
        ({"LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "5"}, 16, None, 0, "PASSIVE", 5),
        ({}, 2, 3, 0, "PASSIVE", 3),  # train.num_threads known
        ({"OMP_NUM_THREADS": "junk", "LOCAL_WORLD_SIZE": "x"}, 2, None, 0, "ACTIVE", 2),
        ({}, 2, None, 1, "PASSIVE", 2),  # another program holds a core
        ({"OMP_NUM_THREADS": "2"}, 8, None, 5, "ACTIVE", 2),  # 2 + 5 <= 8
        ({"OMP_WAIT_POLICY": "PASSIVE"}, 64, None, 0, "PASSIVE", 64),  # the user's choice
        ({"OMP_WAIT_POLICY": "active", "LOCAL_WORLD_SIZE": "8"}, 2, None, 9, "ACTIVE", 2),
    ],
)
def test_wait_policy_decision_table(
    env: Dict[str, str],
    cores: int,
    num_threads: Optional[int],
    busy: int,
    policy: str,
    threads_assumed: int,
) -> None:
    decision = threads.choose_thread_policy(env, cores, num_threads, busy)
    assert decision.wait_policy == policy
    assert decision.threads == threads_assumed
    assert decision.user_set == ("OMP_WAIT_POLICY" in env)
    assert decision.reason


_PROBE = """
import json, os, sys
import torchrec_ple{extra}
from torchrec_ple import threads
assert "torch" not in sys.modules
out = {{k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}}
print(json.dumps(dict(out, busy=threads._POLICY.busy, cores=threads._POLICY.cores)))
"""


def _probe(env: Dict[str, str], cli: bool = False) -> Dict[str, Any]:
    """What the package import (and the CLI's thread setup) leaves in a fresh process."""
    keys = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", threads.CHOSEN)
    clean = {k: v for k, v in os.environ.items() if k not in keys}
    extra = "\nfrom torchrec_ple.cli import _set_thread_env; _set_thread_env()" if cli else ""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(extra=extra)],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _expected(env: Dict[str, str], probed: Dict[str, Any]) -> str:
    """The decision for ``env`` with the cores and other busy threads the process saw
    (the machine's load is not the test's to fix)."""
    seen = (
        dict(env, OMP_NUM_THREADS=probed["OMP_NUM_THREADS"]) if probed["OMP_NUM_THREADS"] else env
    )
    return threads.choose_thread_policy(seen, probed["cores"], busy=probed["busy"]).wait_policy


def test_import_and_cli_choose_policy_and_keep_the_users() -> None:
    cores = threads.available_cores()
    for env in ({}, {"OMP_NUM_THREADS": str(4 * cores)}, {"LOCAL_WORLD_SIZE": "2"}):
        probed = _probe(env)
        assert probed["OMP_NUM_THREADS"] == env.get("OMP_NUM_THREADS")  # import sets none
        assert probed["OMP_WAIT_POLICY"] == _expected(env, probed)
    assert _probe({"OMP_NUM_THREADS": str(4 * cores)})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert _probe({"OMP_WAIT_POLICY": "PASSIVE"})["OMP_WAIT_POLICY"] == "PASSIVE"
    # Under torchrun the CLI gives each process its share of the cores, then decides.
    two = {"LOCAL_WORLD_SIZE": "2"}
    probed = _probe(two, cli=True)
    assert probed["OMP_NUM_THREADS"] == str(max(1, cores // 2))
    assert probed["OMP_WAIT_POLICY"] == _expected(two, probed)
    # A parent's choice, inherited by a child process, is chosen again, not kept as the user's.
    many = {"OMP_NUM_THREADS": str(4 * cores)}
    inherited = {**many, "OMP_WAIT_POLICY": "ACTIVE", threads.CHOSEN: "ACTIVE"}
    assert _probe(inherited)["OMP_WAIT_POLICY"] == "PASSIVE"
    user = {**two, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    probed = _probe(user, cli=True)
    assert (probed["OMP_WAIT_POLICY"], probed["OMP_NUM_THREADS"]) == ("PASSIVE", "1")


def test_log_line_names_policy_threads_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = threads.choose_thread_policy({}, cores=2)
    monkeypatch.setattr(threads, "_POLICY", chosen)
    line = threads.describe_threads(2)
    assert "OMP_WAIT_POLICY=ACTIVE" in line and "2 per process" in line and "<= 2 cores" in line
    busy = threads.choose_thread_policy({}, cores=2, busy=1)
    monkeypatch.setattr(threads, "_POLICY", busy)
    assert "OMP_WAIT_POLICY=PASSIVE" in threads.describe_threads(2)
    assert "1 busy elsewhere > 2 cores" in threads.describe_threads(2)
    monkeypatch.setattr(threads, "_POLICY", chosen)
    # train.num_threads raised the count after libgomp read the policy: say what to set.
    assert "run with OMP_WAIT_POLICY=PASSIVE" in threads.describe_threads(4)
    user = threads.choose_thread_policy({"OMP_WAIT_POLICY": "PASSIVE"}, cores=2)
    monkeypatch.setattr(threads, "_POLICY", user)
    assert "set in the environment" in threads.describe_threads(8)
    monkeypatch.setattr(threads, "_POLICY", None)
    assert "imported before" in threads.describe_threads(2)


# ------------------------------------------------------------------------------ batches


def _per_column_kjt(data: EncodedData, rows: np.ndarray) -> KeyedJaggedTensor:
    """The batch's KeyedJaggedTensor as built before issue 16: one gather per column."""
    all_values, all_lengths = [], []
    for values, offsets in zip(data.values, data.offsets):
        if offsets is None:
            all_values.append(values[rows])
            all_lengths.append(np.ones(len(rows), dtype=np.int32))
        else:
            v, lengths = gather_jagged(values, offsets, rows)
            all_values.append(v)
            all_lengths.append(lengths.astype(np.int32))
    return KeyedJaggedTensor(
        keys=data.keys,
        values=torch.from_numpy(np.concatenate(all_values)),
        lengths=torch.from_numpy(np.concatenate(all_lengths)),
        stride=len(rows),
    )


@st.composite
def _encoded_and_rows(draw: st.DrawFn) -> tuple[EncodedData, np.ndarray]:
    n = draw(st.integers(1, 12))
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=6))  # True: one id per row
    top = draw(st.sampled_from([3, 300, 70_000, 2**40]))  # ids stored in 8/16/32/64 bits
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values: List[np.ndarray] = []
    offsets: List[Optional[np.ndarray]] = []
    for fixed in kinds:
        if fixed:
            values.append(rng.integers(0, top, n, dtype=np.int64))
            offsets.append(None)
        else:
            lengths = rng.integers(0, 4, n)
            offsets.append(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
            values.append(rng.integers(0, top, int(lengths.sum()), dtype=np.int64))
    data = EncodedData(
        keys=[f"f{i}" for i in range(len(kinds))],
        values=values,
        offsets=offsets,
        dense=rng.normal(size=(n, draw(st.integers(0, 3)))).astype(np.float32),
        labels=rng.integers(0, 2, (n, 2)).astype(np.float32),
        masks=rng.integers(0, 2, (n, 2)).astype(np.float32),
    )
    rows = np.asarray(draw(st.lists(st.integers(0, n - 1), max_size=20)), dtype=np.int64)
    return data, rows


def _assert_same_kjt(a: KeyedJaggedTensor, b: KeyedJaggedTensor) -> None:
    assert a.keys() == b.keys()
    assert a.stride() == b.stride()
    assert a.values().dtype == b.values().dtype == torch.int64
    assert a.lengths().dtype == b.lengths().dtype
    assert torch.equal(a.values(), b.values())
    assert torch.equal(a.lengths(), b.lengths())
    assert torch.equal(a.offsets(), b.offsets())
    assert a.length_per_key() == b.length_per_key()
    assert a.offset_per_key() == b.offset_per_key()


@settings(max_examples=60, deadline=None)
@given(_encoded_and_rows())
def test_one_gather_batch_equals_per_column_batch(case: tuple[EncodedData, np.ndarray]) -> None:
    data, rows = case
    for _ in range(2):  # the second call reuses the packed records
        batch = build_batch(data, rows)
        _assert_same_kjt(batch.sparse, _per_column_kjt(data, rows))
        for got, array in [
            (batch.dense, data.dense),
            (batch.labels, data.labels),
            (batch.masks, data.masks),
        ]:
            assert got.dtype == torch.float32 and got.is_contiguous()
            assert torch.equal(got, torch.from_numpy(array[rows]))


def test_batch_follows_replaced_id_columns() -> None:
    """The packed records are rebuilt when the table's arrays are replaced."""
    data = EncodedData(
        keys=["a", "b"],
        values=[np.arange(5, dtype=np.int64), np.arange(5, dtype=np.int64) * 2],
        offsets=[None, None],
        dense=np.zeros((5, 1), np.float32),
        labels=np.zeros((5, 1), np.float32),
        masks=np.ones((5, 1), np.float32),
    )
    rows = np.array([4, 0, 2], dtype=np.int64)
    assert build_batch(data, rows).sparse.values().tolist() == [4, 0, 2, 8, 0, 4]
    data.values[1] = np.arange(5, dtype=np.int64) + 100_000
    assert build_batch(data, rows).sparse.values().tolist() == [4, 0, 2, 100_004, 100_000, 100_002]
    data.masks = np.zeros((5, 1), np.float32)  # so are the packed records of the other arrays
    assert build_batch(data, rows).masks.sum().item() == 0.0


def test_loader_batches_equal_per_column_batches() -> None:
    data, _ = _encoded_and_rows().example()
    loader = BatchLoader(data, 3, shuffle=True, seed=2)
    loader.set_epoch(1)
    for i, batch in enumerate(loader):
        _assert_same_kjt(batch.sparse, _per_column_kjt(data, loader.rows(1, i)))


# ------------------------------------------------------------------------------ head input


def _keyed(keys: List[str], dims: List[int], batch: int = 3) -> KeyedTensor:
    values = torch.randn(batch, sum(dims), requires_grad=True)
    return KeyedTensor(keys=keys, length_per_key=dims, values=values)


def _by_name(kt: KeyedTensor, names: List[str]) -> torch.Tensor:
    """The head's embedding input as selected before issue 16."""
    pooled = kt.to_dict()
    return torch.cat([pooled[name] for name in names], dim=1)


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(5))), st.lists(st.integers(1, 4), min_size=5, max_size=5))
def test_head_input_equals_by_name_selection(order: List[int], dims: List[int]) -> None:
    names = [f"f{i}" for i in range(5)]
    kt = _keyed([names[i] for i in order], [dims[i] for i in order])
    fast = _in_order(kt, names)
    slow = _by_name(kt, names)
    assert torch.equal(fast, slow)
    # The same gradient reaches the collection's output either way.
    weights = torch.randn_like(slow)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), kt.values())
    (g_slow,) = torch.autograd.grad((slow * weights).sum(), kt.values())
    assert torch.equal(g_fast, g_slow)


def test_head_input_passes_matching_order_through() -> None:
    kt = _keyed(["a", "b", "c"], [2, 3, 1])
    assert _in_order(kt, ["a", "b", "c"]) is kt.values()


class _Permuted(torch.nn.Module):
    """An EBC whose output keys come in another order (as a sharded one may return)."""

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self._ebc = ebc

    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        return self._ebc.embedding_bag_configs()

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        kt = self._ebc(kjt)
        keys = kt.keys()[::-1]
        pooled = kt.to_dict()
        return KeyedTensor(
            keys=keys,
            length_per_key=[pooled[k].shape[1] for k in keys],
            values=torch.cat([pooled[k] for k in keys], dim=1),
        )


def _model(ebc: torch.nn.Module) -> MultiTaskModel:
    head = build_head("ple", 2 + 3 + 3 + 2, 2, num_levels=1, expert_dims=[4])
    return MultiTaskModel(ebc, 2, head, TaskTowers(list(head.output_dims), [3]))  # type: ignore[arg-type]


def _ebc() -> EmbeddingBagCollection:
    torch.manual_seed(0)
    return EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(name="t_u", embedding_dim=2, num_embeddings=5, feature_names=["u"]),
            EmbeddingBagConfig(
                name="t_i", embedding_dim=3, num_embeddings=7, feature_names=["i", "j"]
            ),
        ]
    )


def _inputs() -> tuple[torch.Tensor, KeyedJaggedTensor]:
    kjt = KeyedJaggedTensor(
        keys=["u", "i", "j"],
        values=torch.tensor([1, 4, 2, 6, 0, 3, 5]),
        lengths=torch.tensor([1, 1, 2, 1, 1, 1], dtype=torch.int32),
    )
    return torch.randn(2, 2), kjt


def test_model_features_select_by_name_under_permuted_keys() -> None:
    ebc = _ebc()
    dense, kjt = _inputs()
    plain, permuted = _model(ebc), _model(_Permuted(ebc))
    expected = torch.cat([_by_name(ebc(kjt), ["u", "i", "j"]), dense], dim=1)
    torch.testing.assert_close(plain.features(dense, kjt), expected, rtol=0, atol=0)
    torch.testing.assert_close(permuted.features(dense, kjt), expected, rtol=0, atol=0)


def test_model_scripts_and_traces_with_the_fast_path() -> None:
    """TorchScript (export's fallback) and TorchRec's FX tracer (the training pipeline's
    rewrite) both accept the model; the key-order branch stays one leaf call under FX."""
    from torchrec.fx import symbolic_trace

    model = _model(_ebc()).eval()
    dense, kjt = _inputs()
    with torch.no_grad():
        eager = model(dense, kjt)
        torch.testing.assert_close(torch.jit.script(model)(dense, kjt), eager)
        traced = symbolic_trace(model)
        assert any(n.target is _in_order for n in traced.graph.nodes)
        torch.testing.assert_close(traced(dense, kjt), eager)


def test_auto_tables_are_table_wise_alone_and_never_silently_data_parallel() -> None:
    from torchrec.distributed.types import ShardingType

    from torchrec_ple.train.sharding import auto_sharding_types

    assert auto_sharding_types(1) == [ShardingType.TABLE_WISE.value]
    many = auto_sharding_types(4)
    assert ShardingType.DATA_PARALLEL.value not in many
    assert ShardingType.ROW_WISE.value in many and ShardingType.TABLE_WISE.value in many


def test_one_process_fit_plans_auto_tables_table_wise(tmp_path) -> None:
    from tests.conftest import ROOT
    from torchrec_ple.data.sources import load_tables
    from torchrec_ple.data.validate import fit_and_encode
    from torchrec_ple.spec import load_spec
    from torchrec_ple.train.distributed import init_distributed
    from torchrec_ple.train.trainer import build_state

    spec = load_spec(
        ROOT / "feature_specs" / "synthetic.yaml",
        ["data.synthetic.train_rows=200", "data.synthetic.validation_rows=50"],
    )
    transforms, _, _ = fit_and_encode(spec, *load_tables(spec), None)
    state = build_state(spec, transforms, init_distributed())
    kinds = {
        name: ps.sharding_type
        for module_plan in state.model.plan.plan.values()
        for name, ps in module_plan.items()  # type: ignore[union-attr]
    }
    assert kinds and set(kinds.values()) == {"table_wise"}, kinds


@pytest.mark.parametrize(
    "argv, code",
    [(["--help"], 0), (["validate", "feature_specs/synthetic.yaml"], 0), (["fit"], 2)],
)
def test_the_command_exits_without_teardown_but_keeps_what_an_exit_does(
    tmp_path: Path, argv: List[str], code: int
) -> None:
    # `torchrec-ple` skips the interpreter's teardown (~0.5 s a command); the exit code, the
    # output, atexit handlers and non-daemon threads still behave as in a normal exit
    script = (
        "import atexit, sys, threading, time\n"
        f"atexit.register(lambda: open({str(tmp_path / 'atexit')!r}, 'w').write('ran'))\n"
        "def late():\n"
        "    time.sleep(0.2)\n"
        f"    open({str(tmp_path / 'thread')!r}, 'w').write('joined')\n"
        "threading.Thread(target=late).start()\n"
        "from torchrec_ple.cli import run\n"
        f"sys.argv = ['torchrec-ple', *{argv!r}]\n"
        "run()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == code, out.stderr[-2000:]
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "joined"
    if argv == ["--help"]:
        assert out.stdout.startswith("usage: torchrec-ple")
    if argv[0] == "validate":
        assert "memory:" in out.stdout
    if code == 2:
        assert "the following arguments are required" in out.stderr
