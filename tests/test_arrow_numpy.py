"""Arrow to NumPy without pandas: the same arrays as pyarrow's ``to_numpy``, and a census-like
fit that never imports pandas (pyarrow's pandas bridge cost 0.17 s of every ``fit``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from torchrec_ple.arrow_numpy import array_of, to_numpy

CASES = [
    pa.array([1, 2, 3], pa.int8()),
    pa.array([1, None, 3], pa.int32()),
    pa.array([1.5, None], pa.float32()),
    pa.array([1.5, None, 3.0, None] * 5).slice(3, 9),
    pa.array([1, 2, 3, 4, 5], pa.uint16()).slice(2),
    pa.array([True, False, True] * 5),
    pa.array([True, False, True, True, False, False, True, True, False, True]).slice(3),
    pa.array(["a", None, "bé"]),
    pa.array([None, None], pa.int64()),
    pa.array([], pa.float64()),
    pa.array([True, None]),  # left to pyarrow
    pa.chunked_array([[1, 2], [3]]),
]


@pytest.mark.parametrize("arr", CASES, ids=lambda a: str(a.type))
def test_to_numpy_gives_what_pyarrow_gives(arr: pa.Array) -> None:
    ours, theirs = to_numpy(arr), arr.to_numpy(zero_copy_only=False)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert all((a == b) or (a != a and b != b) for a, b in zip(ours.tolist(), theirs.tolist())), (
        ours,
        theirs,
    )
    if arr.null_count or isinstance(arr, pa.ChunkedArray):
        assert ours.flags.writeable  # a copy, as pyarrow's
    elif len(arr) and not pa.types.is_boolean(arr.type) and arr.type != pa.string():
        assert not ours.flags.writeable  # a view of Arrow's memory: never written through


@pytest.mark.parametrize(
    "values, kind",
    [([3, 1, 2], pa.int64()), (["a", "bé", ""], pa.string()), ([], pa.string()), ([], pa.int64())],
)
def test_array_of_builds_what_pa_array_builds(values: list, kind: pa.DataType) -> None:
    assert array_of(values, kind).equals(pa.array(values, kind))


def test_a_census_like_fit_and_encode_imports_no_pandas(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 500
    cats = rng.choice(["a", "b", "c", None], n).tolist()
    nums = [None if i % 7 == 0 else float(x) for i, x in enumerate(rng.normal(size=n))]
    ints = [None if i % 5 == 0 else int(x) for i, x in enumerate(rng.integers(0, 9, n))]
    import pyarrow.parquet as pq

    table = pa.table({"cat": cats, "num": nums, "code": ints, "y": rng.integers(0, 2, n).tolist()})
    pq.write_table(table, tmp_path / "train.parquet")
    (tmp_path / "spec.yaml").write_text(
        textwrap.dedent(
            f"""
            data: {{train: {{path: {tmp_path / "train.parquet"}}}, validation_fraction: 0.2}}
            features:
              - {{name: cat, type: categorical, embedding: {{dim: 4}}}}
              - {{name: code, type: categorical, embedding: {{dim: 4}}}}
              - {{name: num, type: numeric, normalize: standard}}
            tasks: [{{name: y, label: y, type: binary}}]
            model: {{architecture: ple}}
            """
        )
    )
    code = f"""
import sys
from pathlib import Path
from torchrec_ple.spec import load_spec
from torchrec_ple.data.sources import load_tables
from torchrec_ple.data.validate import fit_and_encode
spec = load_spec(Path({str(tmp_path / "spec.yaml")!r}))
train, valid = load_tables(spec)
transforms, enc, enc_valid = fit_and_encode(spec, train, valid)
assert enc.num_rows == 400 and enc_valid.num_rows == 100, (enc.num_rows, enc_valid.num_rows)
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
