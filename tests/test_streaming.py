"""The streaming data path: planning, exactly-once reading, padding, shuffling, fitting."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_data import SPEC as TRANSFORMS_SPEC
from tests.test_data import _table as transforms_table
from torchrec_ple.data.batch import BatchLoader, MultiTaskBatch
from torchrec_ple.data.clicklog import main as clicklog_main
from torchrec_ple.data.clicklog import write_clicklog
from torchrec_ple.data.sources import read_table, spec_columns
from torchrec_ple.data.streaming import (
    StreamingBatches,
    fit_transforms,
    plan_fragments,
    split_fragments,
    streaming_loader,
)
from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.spec import SpecError, parse_spec

ROWS = 20_000
BATCH = 512

SPEC = """
data: {{train: {{path: {path}, format: {fmt}}}, streaming: true, shuffle_buffer: 3000}}
features:
  - {{name: user, column: user_id, type: categorical, vocab: {{min_count: 2}}, embedding: {{dim: 4}}}}
  - {{name: item, column: item_id, type: categorical, hash_buckets: 1000, embedding: {{dim: 4, table: items}}}}
  - {{name: hist, column: history, type: sequence, max_len: 5, hash_buckets: 1000, {sep}embedding: {{table: items}}}}
  - {{name: price, type: numeric, normalize: log}}
  - {{name: dwell, type: numeric, normalize: standard}}
  - {{name: hour_b, column: hour, type: numeric, buckets: {{num_buckets: 4}}, embedding: {{dim: 2}}}}
  - {{name: rid, column: event_id, type: numeric, normalize: none}}
tasks:
  - {{name: ctr, label: click, type: binary}}
  - {{name: cvr, label: buy, type: binary, sample_space: {{column: click, equals: 1}}}}
  - {{name: watch, label: watch_time, type: regression}}
"""


def _spec(path: Path, fmt: str = "parquet", sep: str = ""):
    return parse_spec(SPEC.format(path=path, fmt=fmt, sep=sep), path.parent / "spec.yaml")


@pytest.fixture(scope="module")
def clicklog(tmp_path_factory: pytest.TempPathFactory):
    """20k rows, 3 files, row groups of 2500 and 1667 rows; fitted transforms."""
    out = tmp_path_factory.mktemp("clicklog") / "train"
    paths = write_clicklog(
        out, ROWS, files=3, row_group_size=2500, num_users=50_000, num_items=5000, chunk_rows=5000
    )
    spec = _spec(out)
    return spec, paths, fit_transforms(spec)


def _rid(batch: MultiTaskBatch) -> np.ndarray:
    """Row ids (the exact ``event_id``, dense column ``rid``) of a batch's real rows."""
    real = batch.masks[:, 0].numpy() > 0  # ctr covers every real row
    return batch.dense[:, -1].numpy()[real].astype(np.int64)


def _rows(batch: MultiTaskBatch, keys: List[str]) -> List[Tuple]:
    """Every real row of a batch as a hashable tuple of all its values."""
    real = batch.masks[:, 0].numpy() > 0
    per_key = batch.sparse.to_dict()
    bags: Dict[str, List[Tuple[int, ...]]] = {}
    for k in keys:
        jt = per_key[k]
        offs = np.concatenate([[0], np.cumsum(jt.lengths().numpy())])
        vals = jt.values().numpy()
        bags[k] = [tuple(vals[offs[i] : offs[i + 1]]) for i in range(batch.batch_size)]
    dense, labels, masks = batch.dense.numpy(), batch.labels.numpy(), batch.masks.numpy()
    return [
        (tuple(dense[i]), tuple(labels[i]), tuple(masks[i]), *(bags[k][i] for k in keys))
        for i in np.flatnonzero(real)
    ]


def _check_padding(batch: MultiTaskBatch) -> int:
    """Padding rows: zero masks, labels, dense values and empty bags. Returns their count."""
    pad = batch.masks[:, 0].numpy() == 0
    assert (batch.masks.numpy()[pad] == 0).all() and (batch.labels.numpy()[pad] == 0).all()
    assert (batch.dense.numpy()[pad] == 0).all()
    lengths = batch.sparse.lengths().numpy().reshape(len(batch.sparse.keys()), -1)
    assert (lengths[:, pad] == 0).all()
    return int(pad.sum())


# ---------------------------------------------------------------------------- generator


def test_generator_layout_and_cvr_sample_space(clicklog) -> None:
    _, paths, _ = clicklog
    assert len(paths) == 3
    groups = [pq.ParquetFile(p).metadata.num_row_groups for p in paths]
    assert groups == [3, 3, 3]  # 2500 + 2500 + 1667 (or 1666) rows per file
    table = pa.concat_tables(pq.read_table(p) for p in paths)
    assert table.num_rows == ROWS
    assert np.array_equal(np.sort(table.column("event_id").to_numpy()), np.arange(ROWS))
    click = table.column("click").to_numpy()
    buy_present = table.column("buy").is_valid().to_numpy(zero_copy_only=False)
    assert np.array_equal(buy_present, click == 1)  # CVR labels exist exactly on clicks
    assert 0.1 < click.mean() < 0.5
    lengths = np.diff(table.column("history").combine_chunks().offsets.to_numpy())
    assert lengths.min() == 0 and lengths.max() > 5  # empty and truncated histories
    assert table.column("dwell").null_count > 0


def test_generator_command_writes_train_and_validation(tmp_path: Path, capsys) -> None:
    assert clicklog_main(["--rows", "3000", "--out", str(tmp_path), "--files", "2"]) == 0
    assert len(list((tmp_path / "train").glob("part-*.parquet"))) == 2
    valid = pq.read_table(tmp_path / "validation")
    assert valid.num_rows == 300
    assert "CTR" in capsys.readouterr().out


# ---------------------------------------------------------------------------- planning


def test_plan_covers_every_row_once_with_equal_rank_rows(clicklog) -> None:
    spec, paths, _ = clicklog
    for world in (1, 2, 3, 4):
        plan = plan_fragments(spec.data.train, world)
        rows = [sum(f.num_rows for f in frags) for frags in plan]
        assert sum(rows) == ROWS and max(rows) - min(rows) <= 1
        covered: Dict[Tuple[str, int], List[Tuple[int, int]]] = {}
        for frags in plan:
            for f in frags:
                covered.setdefault((f.path, f.row_group), []).append((f.start, f.stop))
        for (path, g), ranges in covered.items():
            ranges.sort()
            n = pq.ParquetFile(path).metadata.row_group(g).num_rows
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # no gap, no overlap
        assert plan == plan_fragments(spec.data.train, world)  # deterministic
        for workers in (1, 2, 5):
            parts = split_fragments(plan[0], workers)
            key = lambda f: (f.path, f.row_group, f.start)  # noqa: E731
            assert sorted((f for p in parts for f in p), key=key) == sorted(plan[0], key=key)


# ---------------------------------------------------------------------------- streaming


def _epoch(loader: StreamingBatches, epoch: int, start: int = 0) -> List[MultiTaskBatch]:
    loader.set_epoch(epoch, start_batch=start)
    return list(loader)


def test_every_row_once_across_ranks_and_workers(clicklog) -> None:
    spec, _, tr = clicklog
    seen, lengths = [], set()
    rng_state = torch.get_rng_state()
    for rank in range(2):
        loader = StreamingBatches(
            spec,
            spec.data.train,
            tr,
            BATCH,
            shuffle=True,
            shuffle_buffer=3000,
            rank=rank,
            world_size=2,
            num_workers=2,
            read_rows=1000,
        )
        batches = _epoch(loader, 1)
        assert len(batches) == len(loader) == -(-ROWS // 2 // BATCH)
        assert all(b.batch_size == BATCH for b in batches)
        padding = sum(_check_padding(b) for b in batches)
        assert padding == len(loader) * BATCH - loader.num_rows
        lengths.add(len(batches))
        seen.extend(np.concatenate([_rid(b) for b in batches]))
    assert len(lengths) == 1  # every rank runs the same number of batches
    assert np.array_equal(np.sort(seen), np.arange(ROWS))
    # Workers leave torch's global RNG alone (dropout): resumed runs replay exactly.
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_uneven_ranks_pad_with_whole_batches(clicklog, tmp_path: Path) -> None:
    spec, paths, tr = clicklog
    # 5 rows over 3 ranks: ranks of 1 and 2 rows all run one batch of 4 rows.
    pq.write_table(pq.read_table(paths[0]).slice(0, 5), tmp_path / "tiny.parquet")
    fs = _spec(tmp_path / "tiny.parquet").data.train
    seen = []
    for rank in range(3):
        loader = StreamingBatches(spec, fs, tr, 4, rank=rank, world_size=3)
        batches = _epoch(loader, 0)
        assert len(batches) == 1 and batches[0].batch_size == 4
        assert _check_padding(batches[0]) == 4 - loader.num_rows
        seen.extend(_rid(batches[0]))
    assert sorted(seen) == list(range(5))
    # More ranks than rows: a rank with none still runs the common number of batches.
    loader = StreamingBatches(spec, fs, tr, 4, rank=0, world_size=7)  # rows: 0,1,1,0,1,1,1
    (batch,) = _epoch(loader, 0)
    assert _check_padding(batch) == 4 and batch.sparse.values().numel() == 0


def test_shuffle_changes_order_between_epochs_not_the_set(clicklog) -> None:
    spec, _, tr = clicklog
    loader = StreamingBatches(spec, spec.data.train, tr, BATCH, shuffle=True, shuffle_buffer=3000)
    ids = [np.concatenate([_rid(b) for b in _epoch(loader, e)]) for e in (0, 1, 0)]
    assert not np.array_equal(ids[0], ids[1])
    assert np.array_equal(np.sort(ids[0]), np.sort(ids[1]))
    assert np.array_equal(ids[0], ids[2])  # an epoch's order is reproducible
    # The buffer mixes rows across row groups: consecutive rows are far apart in the files.
    assert np.median(np.abs(np.diff(ids[0]))) > 1000
    unshuffled = StreamingBatches(spec, spec.data.train, tr, BATCH)
    assert np.array_equal(np.concatenate([_rid(b) for b in _epoch(unshuffled, 3)]), np.arange(ROWS))


def test_resume_skips_the_first_batches(clicklog) -> None:
    spec, _, tr = clicklog
    loader = StreamingBatches(spec, spec.data.train, tr, BATCH, shuffle=True, shuffle_buffer=3000)
    full = _epoch(loader, 2)
    tail = _epoch(loader, 2, start=5)
    assert len(tail) == len(full) - 5
    for a, b in zip(full[5:], tail):
        assert np.array_equal(_rid(a), _rid(b))


def test_streaming_rows_equal_in_memory_loader_rows(clicklog) -> None:
    spec, _, tr = clicklog
    keys = [f.name for f in spec.sparse_features]
    encoded = tr.encode(read_table(spec.data.train, spec_columns(spec)))
    ref = sorted(r for b in BatchLoader(encoded, 1000) for r in _rows(b, keys))
    got = []
    for rank in range(2):
        loader = StreamingBatches(
            spec,
            spec.data.train,
            tr,
            BATCH,
            shuffle=True,
            shuffle_buffer=2000,
            rank=rank,
            world_size=2,
        )
        got += [r for b in _epoch(loader, 0) for r in _rows(b, keys)]
    assert len(ref) == ROWS and sorted(got) == ref


def test_csv_streams_at_file_granularity(clicklog, tmp_path: Path) -> None:
    spec, paths, tr = clicklog
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    slices = [pq.read_table(p).slice(0, 1500 + 500 * i) for i, p in enumerate(paths[:2])]
    for i, part in enumerate(slices):
        frame = part.to_pandas()
        frame["history"] = ["|".join(map(str, h)) for h in frame["history"]]
        frame.to_csv(csv_dir / f"part-{i}.csv", index=False)
    cspec = _spec(csv_dir, fmt="csv", sep='separator: "|", ')
    plan = plan_fragments(cspec.data.train, 2)
    assert [[f.num_rows for f in frags] for frags in plan] == [[2000], [1500]]
    # Fitted on CSV chunks like on the same rows from Parquet.
    fitted = fit_transforms(cspec, read_rows=700).state
    whole = FeatureTransforms.fit(spec, pa.concat_tables(slices)).state
    assert fitted["vocabs"] == whole["vocabs"] and fitted["buckets"] == whole["buckets"]
    assert fitted["numeric"]["dwell"]["std"] == pytest.approx(whole["numeric"]["dwell"]["std"])
    # Encoded with the same transforms, the CSV rows equal the Parquet rows.
    same = FeatureTransforms(cspec, tr.state)
    # (Not hist: split CSV text holds string ids, which hash unlike the Parquet integers.)
    keys = [f.name for f in cspec.sparse_features if f.name != "hist"]
    rows = []
    for rank in range(2):
        loader = StreamingBatches(cspec, cspec.data.train, same, 300, rank=rank, world_size=2)
        batches = _epoch(loader, 0)
        assert len(batches) == 7  # ceil(2000 / 300) on both ranks
        rows += [r for b in batches for r in _rows(b, keys)]
    ref = [r for part in slices for b in BatchLoader(tr.encode(part), 500) for r in _rows(b, keys)]
    assert sorted(rows) == sorted(ref)


# ---------------------------------------------------------------------------- fitting


def test_fit_streaming_equals_fit_on_the_whole_table(clicklog) -> None:
    spec, _, streamed = clicklog
    whole = FeatureTransforms.fit(spec, read_table(spec.data.train, spec_columns(spec))).state
    got = streamed.state
    assert got["vocabs"] == whole["vocabs"] and len(got["vocabs"]["user"]["values"]) > 100
    assert got["buckets"] == whole["buckets"]  # fewer values than the reservoir: exact
    assert got["numeric"].keys() == whole["numeric"].keys()
    for name, stats in whole["numeric"].items():
        for key, value in stats.items():
            assert got["numeric"][name][key] == pytest.approx(value, rel=1e-12), (name, key)
    # A reservoir smaller than the data approximates the quantile edges.
    small = fit_transforms(spec, reservoir_size=2000, read_rows=700).state
    assert small["vocabs"] == whole["vocabs"]
    assert np.allclose(small["buckets"]["hour_b"], whole["buckets"]["hour_b"], atol=1.5)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_fit_streaming_is_independent_of_chunking(cuts) -> None:
    spec = parse_spec(TRANSFORMS_SPEC, Path("/tmp/spec.yaml"))
    table = transforms_table()
    bounds = np.unique(np.clip(np.cumsum(cuts), 0, table.num_rows))
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [table.num_rows]])
    chunks = [table.slice(a, b - a) for a, b in zip(starts, stops) if b > a]
    ref = FeatureTransforms.fit(spec, table).state
    got = FeatureTransforms.fit_streaming(spec, chunks).state
    assert got["vocabs"] == ref["vocabs"] and got["buckets"] == ref["buckets"]
    for name, stats in ref["numeric"].items():
        for key, value in stats.items():
            assert got["numeric"][name][key] == pytest.approx(value, rel=1e-12)


# ---------------------------------------------------------------------------- spec


def test_spec_fields_and_loader_factory(clicklog) -> None:
    spec, _, tr = clicklog
    assert spec.data.streaming and spec.data.shuffle_buffer == 3000 and spec.data.num_workers == 0
    train = streaming_loader(spec, tr, "train", rank=1, world_size=2)
    assert len(train) == -(-ROWS // 2 // spec.train.batch_size)
    with pytest.raises(SpecError, match="shuffle_buffer"):
        parse_spec(SPEC.format(path="x", fmt="parquet", sep="").replace("3000", "0"))
    with pytest.raises(SpecError, match="validation_fraction"):
        parse_spec(
            SPEC.format(path="x", fmt="parquet", sep="").replace(
                "3000", "3, validation_fraction: 0.1"
            )
        )
