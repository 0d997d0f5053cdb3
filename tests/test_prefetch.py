"""The CLI's ``fit`` reads, fits and encodes its data on a thread while TorchRec imports
(``DataPrefetch``): the same run as without it, its errors raised where the data was always
read, nothing done early that writes or deletes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli_helpers import SMALL_RUN
from tests.conftest import ROOT
from torchrec_ple.data.pipeline import open_splits
from torchrec_ple.data.prefetch import DataPrefetch
from torchrec_ple.data.transforms import FeatureTransforms
from torchrec_ple.spec import load_spec
from torchrec_ple.spec.errors import DataError
from torchrec_ple.train.trainer import fit

SETTINGS = SMALL_RUN


def _spec():
    return load_spec(ROOT / "feature_specs" / "synthetic.yaml", SETTINGS)


def test_a_prefetched_fit_is_the_same_run(tmp_path: Path) -> None:
    spec = _spec()
    plain = fit(spec, tmp_path / "plain", log=lambda _: None)
    ahead = fit(spec, tmp_path / "ahead", log=lambda _: None, prefetch=DataPrefetch.start(spec))
    assert ahead["tasks"] == plain["tasks"]
    assert ahead["history"][-1]["train_loss"] == plain["history"][-1]["train_loss"]
    for name in ("transforms.json",):
        assert (tmp_path / "ahead" / name).read_text() == (tmp_path / "plain" / name).read_text()


def test_the_threads_data_error_is_raised_by_open_splits_as_one_line(tmp_path: Path) -> None:
    path = tmp_path / "train.parquet"
    pq.write_table(pa.table({"age": ["1", "x"] * 20, "y": [0, 1] * 20}), path)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        f"data: {{train: {{path: {path}}}, validation_fraction: 0.25}}\n"
        "features: [{name: age, type: numeric}]\n"
        "tasks: [{name: y, label: y, type: binary}]\n"
        "model: {architecture: ple}\n"
    )
    spec = load_spec(spec_file)
    prefetch = DataPrefetch.start(spec)
    assert prefetch is not None
    with pytest.raises(DataError) as err:
        open_splits(spec, None, fit=True, prefetched=prefetch)
    message = str(err.value)
    assert message.splitlines() == [message]
    assert str(path) in message and "'age'" in message and "numbers" in message


def test_nothing_to_prefetch_for_streamed_data() -> None:
    spec = load_spec(ROOT / "feature_specs" / "clicklog.yaml")
    assert spec.data.streaming and DataPrefetch.start(spec) is None


def test_a_resumed_run_drops_the_prefetch_and_loads_its_saved_transforms(tmp_path: Path) -> None:
    spec = _spec()
    fit(spec, tmp_path / "run", log=lambda _: None)
    saved = tmp_path / "run" / "transforms.json"
    before = saved.read_text()
    prefetch = DataPrefetch.start(spec)
    assert prefetch is not None
    transforms, train, _ = open_splits(spec, saved, fit=False, prefetched=prefetch)
    assert saved.read_text() == before  # loaded, not rewritten
    assert transforms.state == FeatureTransforms.load(spec, saved).state
    assert len(train) > 0
    with pytest.raises(RuntimeError, match="dropped"):
        prefetch.result(spec)  # nothing is held for a run that does not use it


def test_the_result_belongs_to_its_spec() -> None:
    spec, other = _spec(), _spec()
    prefetch = DataPrefetch.start(spec)
    assert prefetch is not None
    with pytest.raises(ValueError, match="not the spec that was prefetched"):
        prefetch.result(other)
    transforms, train, valid = prefetch.result(spec)
    assert train.num_rows == 600 and valid is not None and valid.num_rows == 200
    with pytest.raises(RuntimeError, match="already taken"):
        prefetch.result(spec)
