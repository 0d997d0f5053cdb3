"""The bad-input catalogue of issue #12: each input a new user could give, run through the
CLI as they would, with the exit code and the one line (or the warning line) it must
produce, never a traceback. (The launcher's death under torchrun, and the third-party
notices a normal run must not print: tests/test_notices_and_launcher.py.)

The catalogue runs the CLI in process (``main([...])``): an exception escaping it fails
the test with its traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.cli_helpers import _sets
from tests.test_bad_data import SPEC, frame, set_cell
from torchrec_ple.cli import main

# a tiny run to evaluate: 40 rows, 8 per batch, one epoch
FIT_SETTINGS = ["data.validation_fraction=0.25"]


def write(folder: Path, df: pd.DataFrame, spec: str = SPEC, name: str = "train.csv") -> Path:
    """The data as ``name`` (CSV, gzip CSV or Parquet by suffix) and its spec."""
    if name.endswith(".parquet"):
        df.to_parquet(folder / name, index=False)
    else:
        df.to_csv(folder / name, index=False)
    path = folder / "spec.yaml"
    path.write_text(spec.replace("train.csv", name))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fitted run (``run/``) beside its spec and data."""
    folder = tmp_path_factory.mktemp("fitted")
    spec = write(folder, frame())
    assert main(["fit", str(spec), "--out", str(folder / "run"), *_sets(FIT_SETTINGS)]) == 0
    return folder


# ------------------------------------------------------------------------ the catalogue
# A case makes its input in a fresh folder (with the fitted run's folder at hand) and
# returns the command line; then the exit code and the fragments of the one line it
# must print: on stderr after "error: " for a refusal, on stdout for a run that goes on.


class Case(NamedTuple):
    make: Callable[[Path, Path], List[str]]
    rc: int
    fragments: List[str]


def _run_copy(tmp: Path, fitted: Path) -> Path:
    shutil.copytree(fitted, tmp / "f")
    return tmp / "f"


def _ckpt(folder: Path) -> Path:
    return next((folder / "run" / "checkpoints").glob("step_*"))


def evaluate_with(damage: Callable[[Path], None], *settings: str) -> Callable:
    def make(tmp: Path, fitted: Path) -> List[str]:
        f = _run_copy(tmp, fitted)
        damage(_ckpt(f))
        return [
            "evaluate",
            str(f / "spec.yaml"),
            "--checkpoint",
            str(f / "run"),
            *_sets(list(settings)),
        ]

    return make


def _garbage(ckpt: Path) -> None:
    for p in ckpt.glob("*.distcp"):
        p.write_bytes(np.random.default_rng(0).bytes(200))


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        for p in ckpt.glob(name):
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 10])

    return damage


def _nothing(ckpt: Path) -> None:
    pass


def command(
    cmd: str,
    mutate: Callable[[pd.DataFrame], pd.DataFrame] = lambda d: d,
    *extra: str,
    spec: str = SPEC,
    name: str = "train.csv",
) -> Callable:
    def make(tmp: Path, fitted: Path) -> List[str]:
        path = write(tmp, mutate(frame()), spec, name)
        out = ["--out", str(tmp / "run")] if cmd == "fit" else []
        return [cmd, str(path), *out, *extra]

    return make


def truncated_gz(tmp: Path, fitted: Path) -> List[str]:
    spec = write(tmp, frame(), name="train.csv.gz")
    data = (tmp / "train.csv.gz").read_bytes()
    (tmp / "train.csv.gz").write_bytes(data[: len(data) // 2])
    return ["validate", str(spec), "--scan"]


def csv_folder(files: int) -> Callable:
    def make(tmp: Path, fitted: Path) -> List[str]:
        (tmp / "data").mkdir()
        for i in range(files):
            frame().to_csv(tmp / "data" / f"part{i}.csv", index=False)
        spec = tmp / "spec.yaml"
        spec.write_text(SPEC.replace("{path: train.csv}", "{path: data, format: csv}"))
        return ["validate", str(spec), "--scan"]

    return make


def parquet_folder_with_text_prices(tmp: Path, fitted: Path) -> List[str]:
    (tmp / "parts").mkdir()
    frame().to_parquet(tmp / "parts" / "a.parquet", index=False)
    frame().assign(price=[f"x{i}" for i in range(40)]).to_parquet(tmp / "parts" / "b.parquet")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.replace("train.csv", "parts"))
    return ["validate", str(spec)]


def duplicated_header(tmp: Path, fitted: Path) -> List[str]:
    spec = write(tmp, frame())
    lines = (tmp / "train.csv").read_text().splitlines()
    lines[0] = lines[0].replace("city", "price")
    (tmp / "train.csv").write_text("\n".join(lines) + "\n")
    return ["validate", str(spec)]


def uint64_ids(tmp: Path, fitted: Path) -> List[str]:
    df = frame()
    table = pa.Table.from_pandas(df.drop(columns=["user"]), preserve_index=False)
    ids = [2**64 - 1 - i % 5 for i in range(len(df))]  # 64-bit hashes past int64
    pq.write_table(table.append_column("user", pa.array(ids, pa.uint64())), tmp / "t.parquet")
    spec = tmp / "spec.yaml"
    spec.write_text(SPEC.replace("train.csv", "t.parquet"))
    return ["validate", str(spec), "--scan"]


def minmax_overflow(tmp: Path, fitted: Path) -> List[str]:
    # a span of 1e-6 in training: a validation price of 1e38 becomes 1e44 once normalized
    train = frame().assign(price=10.0)
    train.loc[0, "price"] = 10.000001
    spec = write(tmp, train, SPEC.replace("validation_fraction: 0", "validation: {path: v.csv}"))
    set_cell(frame(), "price", [2], 1e38).to_csv(tmp / "v.csv", index=False)
    return ["validate", str(spec), "--scan", "--set", "features[2].normalize=minmax"]


POSITIVE = SPEC.replace(
    "{name: ctr, label: click}", "{name: ctr, label: click, positive: ['Yes']}"
).replace("equals: 1", "equals: 'yes'")


def _yes_no(d: pd.DataFrame) -> pd.DataFrame:
    return d.assign(click=np.where(d["click"] == 1, "yes", "no"))


VALIDATION_WITHOUT_WATCH = SPEC.replace("validation_fraction: 0", "validation: {path: v.csv}")


def validation_without_labels(tmp: Path, fitted: Path) -> List[str]:
    spec = write(tmp, frame(), VALIDATION_WITHOUT_WATCH)
    frame().assign(watch=np.nan).to_csv(tmp / "v.csv", index=False)
    return ["validate", str(spec), "--scan"]


HUGE = "features[3].embedding.dim=10000000000"  # 10 rows x 1e10 dims: terabytes

CASES: Dict[str, Case] = {
    # ---- tracebacks before: now one line
    "evaluate_garbage_checkpoint": Case(
        evaluate_with(_garbage),
        2,
        ["step_", "expected a readable checkpoint written by fit", "damaged or truncated"],
    ),
    "evaluate_truncated_checkpoint": Case(
        evaluate_with(_truncate("*.distcp")),
        2,
        ["step_", "expected a readable checkpoint written by fit", "PytorchStreamReader"],
    ),
    "evaluate_truncated_checkpoint_metadata": Case(
        evaluate_with(_truncate(".metadata")), 2, ["found an unreadable .metadata file"]
    ),
    "evaluate_with_other_model_dims": Case(
        evaluate_with(_nothing, "model.expert_dims=[16]"),
        2,
        [
            "expected a checkpoint of the model this spec builds",
            "parameter 'head.",
            "run has [",
            "spec has [",
        ],
    ),
    "evaluate_with_other_embedding_dim": Case(
        evaluate_with(_nothing, "features[0].embedding.dim=8"),
        2,
        ["parameter 'ebc.embedding_bags.t_user.weight'", ", 4], spec has [", ", 8]"],
    ),
    "validate_embedding_too_large_for_memory": Case(
        command("validate", lambda d: d, "--set", HUGE),
        2,
        ["features[3].embedding.dim: expected a model that fits in the", "table 'city': 10 rows x"],
    ),
    "fit_embedding_too_large_for_memory": Case(
        command("fit", lambda d: d, "--set", HUGE),
        2,
        ["features[3].embedding.dim: expected a model that fits in the"],
    ),
    "table_name_with_a_dot": Case(
        command("validate", lambda d: d, "--no-data", "--set", "features[0].embedding.table=a.b"),
        2,
        ["features[0].embedding.table: expected a table name without '.'", "'a.b'"],
    ),
    "sparse_feature_name_with_a_dot": Case(
        command(
            "validate",
            lambda d: d,
            "--no-data",
            "--set",
            "features[0].name=u.ser",
            "--set",
            "features[0].column=user",
        ),
        2,
        ["features[0].name: expected a name", "without '.'", "set embedding.table"],
    ),
    "id_beyond_int64_in_csv": Case(
        command("validate", lambda d: set_cell(d, "city", [3], 2**64 + 5), "--scan"),
        2,
        ["train.csv, row 3: column 'city': expected integers within int64", "18446744073709551621"],
    ),
    "id_beyond_int64_in_fit": Case(
        command("fit", lambda d: set_cell(d, "city", [3], -(2**70))),
        2,
        ["row 3: column 'city': expected integers within int64", "-1180591620717411303424"],
    ),
    "truncated_csv_gz": Case(
        truncated_gz, 2, ["train.csv.gz: expected a readable CSV file", "truncated or damaged"]
    ),
    "csv_path_that_is_an_empty_folder": Case(
        csv_folder(0), 2, ["data: expected data files in the directory, found none"]
    ),
    # ---- wrong silently before: now one line, or a warning line in the report
    "positive_list_matching_no_label": Case(
        command("validate", _yes_no, "--scan", spec=POSITIVE),
        2,
        [
            "column 'click': expected some labels among task 'ctr''s positive values ['Yes']",
            "its values are list ['no', 'yes']",
            "did you mean 'yes'?",
        ],
    ),
    "positive_list_of_unquoted_yes_in_fit": Case(
        command("fit", _yes_no, spec=POSITIVE.replace("['Yes']", "[yes]")),
        2,
        ["positive values [True]", "YAML reads unquoted yes/no/on/off as true/false"],
    ),
    "validation_with_every_label_of_a_task_missing": Case(
        validation_without_labels,
        0,
        ["watch: 40 labels missing, no row left in its sample space: its metrics are undefined"],
    ),
    "inf_in_a_numeric_column_is_filled_and_counted": Case(
        command("validate", lambda d: set_cell(d, "price", [5], "inf"), "--scan"),
        0,
        ["price: 1 filled"],
    ),
    "float64_beyond_float32_is_filled_and_counted": Case(
        command("validate", lambda d: set_cell(d, "price", [5, 6], 1e308), "--scan"),
        0,
        ["price: 2 filled"],
    ),
    "float64_beyond_float32_with_on_missing_error": Case(
        command(
            "validate",
            lambda d: set_cell(d, "price", [5], -1e300),
            "--scan",
            "--set",
            "features[2].on_missing=error",
        ),
        2,
        [
            "train.csv: column 'price': expected no missing or non-finite values (beyond float32",
            "e.g. row 5",
        ],
    ),
    "beyond_float32_once_normalized": Case(minmax_overflow, 0, ["price: 1 filled"]),
    "regression_label_beyond_float32_is_missing": Case(
        command("validate", lambda d: set_cell(d, "watch", [4], 1e300), "--scan"),
        0,
        ["watch: 1 labels missing"],
    ),
    "duplicated_csv_header_column": Case(
        duplicated_header,
        2,
        [
            "train.csv: column 'price': expected each column name once in the header",
            "pandas would read it as 'price.1'",
        ],
    ),
    "parquet_folder_with_a_file_of_another_type": Case(
        parquet_folder_with_text_prices,
        2,
        ["parts/b.parquet: column 'price': expected type double like the other files", "string"],
    ),
    # ---- what now works
    "uint64_ids_past_int64_are_ids": Case(uint64_ids, 0, ["40 rows read, 40 kept"]),
    "csv_folder_reads_every_file": Case(csv_folder(2), 0, ["80 rows read, 80 kept"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line(
    case: str, fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, rc, fragments = CASES[case]
    argv = make(tmp_path, fitted)
    assert main(argv) == rc
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    if rc == 0:
        text = out
    else:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, err
        text = errors[0]
    for part in fragments:
        assert part in text, f"{part!r} not in {text!r}"


def test_catalogue_size() -> None:
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 88000000792 bytes. Error code 12"
        ),
    ],
)
def test_out_of_memory_is_one_line(
    error: BaseException, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torchrec_ple.cli as cli

    def fail(args: object) -> int:
        raise error

    monkeypatch.setitem(cli._COMMANDS, "validate", fail)
    assert main(["validate", "spec.yaml"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: out of memory: "), err
    if isinstance(error, RuntimeError):
        assert "tried to allocate 88000000792 bytes" in err
