"""The in-memory pre-checks of the bad-input catalogue, on the streaming path.

``data.streaming: true`` reads CSV files chunk by chunk and fits the transforms in a
streaming pass (:mod:`torchrec_ple.data.streaming`); each input here must give the same
one line as in memory (``tests/test_bad_input_catalogue.py``), before the model is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import pandas as pd
import pytest

from tests.test_bad_data import SPEC, frame, set_cell
from tests.test_bad_input_catalogue import HUGE, POSITIVE, _yes_no
from torchrec_ple.cli import main
from torchrec_ple.data.readers import files as file_reader

STREAMING = ["--set", "data.streaming=true"]


def streamed(spec: str) -> str:
    """A catalogue spec for streaming, which holds no rows out (no validation_fraction)."""
    return spec.replace("  validation_fraction: 0\n", "")


class Case(NamedTuple):
    make: Callable[[Path], List[str]]
    fragments: List[str]


def fit_streaming(
    mutate: Callable[[pd.DataFrame], pd.DataFrame] = lambda d: d,
    *extra: str,
    spec: str = SPEC,
) -> Callable[[Path], List[str]]:
    """``fit`` with ``data.streaming=true`` on the (mutated) 40 rows as ``train.csv``."""

    def make(tmp: Path) -> List[str]:
        mutate(frame()).to_csv(tmp / "train.csv", index=False)
        (tmp / "spec.yaml").write_text(streamed(spec))
        return ["fit", str(tmp / "spec.yaml"), "--out", str(tmp / "run"), *STREAMING, *extra]

    return make


def _duplicate_city_as_price(path: Path) -> None:
    lines = path.read_text().splitlines()
    lines[0] = lines[0].replace("city", "price")
    path.write_text("\n".join(lines) + "\n")


def duplicated_header(tmp: Path) -> List[str]:
    argv = fit_streaming()(tmp)
    _duplicate_city_as_price(tmp / "train.csv")
    return argv


def duplicated_header_in_second_file(tmp: Path) -> List[str]:
    """A CSV folder whose first file is clean: every file's header is checked."""
    (tmp / "data").mkdir()
    for i in range(2):
        frame().to_csv(tmp / "data" / f"part{i}.csv", index=False)
    _duplicate_city_as_price(tmp / "data" / "part1.csv")
    spec = SPEC.replace("{path: train.csv}", "{path: data, format: csv}")
    (tmp / "spec.yaml").write_text(streamed(spec))
    return ["fit", str(tmp / "spec.yaml"), "--out", str(tmp / "run"), *STREAMING]


CASES: Dict[str, Case] = {
    "positive_list_matching_no_label": Case(
        fit_streaming(_yes_no, spec=POSITIVE),
        [
            "train.csv: column 'click': expected some labels among task 'ctr''s positive values ['Yes']",
            "its values are list ['no', 'yes']",
            "did you mean 'yes'?",
        ],
    ),
    "positive_list_of_unquoted_yes": Case(
        fit_streaming(_yes_no, spec=POSITIVE.replace("['Yes']", "[yes]")),
        ["positive values [True]", "YAML reads unquoted yes/no/on/off as true/false"],
    ),
    "duplicated_csv_header_column": Case(
        duplicated_header,
        [
            "train.csv: column 'price': expected each column name once in the header",
            "pandas would read it as 'price.1'",
        ],
    ),
    "duplicated_csv_header_column_in_a_later_file": Case(
        duplicated_header_in_second_file,
        [
            "part1.csv: column 'price': expected each column name once in the header",
            "pandas would read it as 'price.1'",
        ],
    ),
    "id_beyond_int64_in_csv": Case(
        fit_streaming(lambda d: set_cell(d, "city", [3], 2**64 + 5)),
        ["train.csv, row 3: column 'city': expected integers within int64", "18446744073709551621"],
    ),
    "negative_id_beyond_int64_in_csv": Case(
        fit_streaming(lambda d: set_cell(d, "city", [3], -(2**70))),
        [
            "train.csv, row 3: column 'city': expected integers within int64",
            "-1180591620717411303424",
        ],
    ),
    "embedding_too_large_for_memory": Case(
        fit_streaming(lambda d: d, "--set", HUGE),
        ["features[3].embedding.dim: expected a model that fits in the", "table 'city': 10 rows x"],
    ),
}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_streaming_bad_input_gives_the_in_memory_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, fragments = CASES[case]
    argv = make(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    line = _one_error_line(out + err)
    for part in fragments:
        assert part in line, f"{part!r} not in {line!r}"
    # refused before training: no checkpoint written
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("row", [3, 13, 39])
def test_id_beyond_int64_names_its_file_row_across_chunks(
    row: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # chunks of 8 rows: the row is counted from the file's first row, not the chunk's
    monkeypatch.setattr(file_reader, "DEFAULT_READ_ROWS", 8)
    argv = fit_streaming(lambda d: set_cell(d, "city", [row], 2**64 + 5))(tmp_path)
    assert main(argv) == 2
    line = _one_error_line("".join(capsys.readouterr()))
    assert f"train.csv, row {row}: column 'city': expected integers within int64" in line, line
