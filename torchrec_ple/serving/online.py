"""One model folder ready for online scoring: raw rows -> saved transforms -> program, timed.

:class:`OnlineModel` is what ``torchrec-ple serve`` swaps on reload: the exported program
(:func:`~torchrec_ple.serving.export.load_exported`), its transforms, the columns a request
must hold and, with a feature store, the :class:`~torchrec_ple.serving.feast_online.FeastReader`
of its features. Scoring goes through the same functions as ``predict``
(:func:`~torchrec_ple.serving.predict.prediction_table`, ``FeatureTransforms.encode`` with
``dropped="keep"``, :func:`~torchrec_ple.serving.predict.model_inputs`), so a served score
equals the file-scored one.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import torch

from torchrec_ple.registry import FEATURE_KINDS
from torchrec_ple.serving.export import (
    MANIFEST_FILE,
    SPEC_FILE,
    TRANSFORMS_FILE,
    ExportedModel,
    example_inputs,
    load_exported,
)
from torchrec_ple.serving.predict import feature_columns, model_inputs, prediction_table
from torchrec_ple.spec.errors import DataError
from torchrec_ple.spec.schema import Spec

if TYPE_CHECKING:  # pragma: no cover
    from torchrec_ple.serving.feast_online import FeastReader

# What a request may put in a raw feature column (see :func:`column_kinds`).
NUMBER, ID, CATEGORY, TEXT, LIST = "number", "id", "category", "text", "list"


@dataclass
class StageTimes:
    """Seconds spent in each stage of scoring one batch.

    Args:
        feature_read (float): the online store read (0 for raw values).
        transforms (float): saved transforms and model inputs.
        model (float): the exported program.
    """

    feature_read: float = 0.0
    transforms: float = 0.0
    model: float = 0.0


@dataclass
class BatchScores:
    """Scores of a batch of rows, with what serving changed in them.

    Args:
        scores (np.ndarray): (N, K) float32, rows in request order, tasks in spec order.
        report (Dict[str, Any]): the encoding report (fills, out-of-vocabulary ids, ...).
        unknown (int): entity rows the online store had no feature value for.
        filled (Dict[str, int]): nulls replaced by the server's fill values, per column.
        times (StageTimes): seconds per stage.
    """

    scores: np.ndarray
    report: Dict[str, Any]
    unknown: int = 0
    filled: Dict[str, int] = field(default_factory=dict)
    times: StageTimes = field(default_factory=StageTimes)


def column_kinds(spec: Spec) -> Dict[str, Tuple[str, str]]:
    """What each raw feature column holds: ``(kind, item kind)``.

    Kinds: ``number`` (numeric or bucketized), ``id`` (identity-mapped integer ids),
    ``category`` (a string or integer value), ``text`` (a string split on a separator),
    ``list`` (a list of ``id`` or ``category`` items). A column read by several features
    takes the first feature's kind.
    """
    kinds: Dict[str, Tuple[str, str]] = {}
    for f in spec.features:
        if f.column in kinds:
            continue
        item = ID if f.num_embeddings is not None else CATEGORY
        column_kind = FEATURE_KINDS.get(f.type).column_kind
        if column_kind == "numeric":
            kinds[f.column] = (NUMBER, "")
        elif column_kind == "list":
            kinds[f.column] = (TEXT, "") if f.separator is not None else (LIST, item)
        else:
            kinds[f.column] = (item, "")
    return kinds


def model_version(model_dir: Path, manifest: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the folder's program, transforms, spec and manifest."""
    digest = hashlib.sha256()
    for name in (str(manifest.get("file", "")), TRANSFORMS_FILE, SPEC_FILE, MANIFEST_FILE):
        path = model_dir / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def training_summary(manifest: Mapping[str, Any]) -> Dict[str, Any]:
    """The checkpoint and its epoch's training loss and validation metrics, from the manifest."""
    state = manifest.get("trainer_state") or {}
    history = state.get("history") or []
    entry = next((h for h in history if h.get("step") == state.get("step")), None)
    if entry is None and history:
        entry = history[-1]
    out: Dict[str, Any] = {
        "checkpoint": manifest.get("checkpoint_choice"),
        "step": state.get("step"),
        "epochs": state.get("epoch"),
    }
    if entry is not None:
        out["epoch"] = entry.get("epoch")
        out["train_loss"] = entry.get("train_loss")
        out["validation"] = entry.get("validation")
    return out


class OnlineModel:
    """A loaded model folder that scores rows: raw feature values, or entity keys read
    from the online store.

    Args:
        model_dir (Path): the model folder.
        exported (ExportedModel): the loaded program, spec, transforms and manifest.
        version (str): the folder's :func:`model_version`.
        reader (Optional[FeastReader]): the online store reader; None: raw values only.

    Example::

        model = load_online_model("runs/demo/model")
        out = model.score_rows([{"age": 31.0, "city_id": 4, "history": [3], "country": "de"}])
        out.scores  # (1, K)
    """

    def __init__(
        self,
        model_dir: Path,
        exported: ExportedModel,
        version: str,
        reader: Optional[FeastReader] = None,
    ) -> None:
        self._dir = model_dir
        self._exported = exported
        self._reader = reader
        self._columns = feature_columns(exported.spec)
        self._kinds = column_kinds(exported.spec)
        self._version = version
        self._loaded_at = time.time()

    @property
    def spec(self) -> Spec:
        return self._exported.spec

    @property
    def version(self) -> str:
        return self._version

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.spec.tasks]

    @property
    def columns(self) -> List[str]:
        """The raw feature columns a row of values must hold, in spec order."""
        return list(self._columns)

    @property
    def kinds(self) -> Dict[str, Tuple[str, str]]:
        return dict(self._kinds)

    @property
    def reader(self) -> Optional[FeastReader]:
        return self._reader

    def warm_up(self) -> None:
        """Run the program once on valid inputs (its first call is the slow one)."""
        with torch.inference_mode():
            self._exported.module(*example_inputs(self.spec, batch_size=2))

    def score_table(self, table: pa.Table) -> BatchScores:
        """(N, K) scores of raw rows holding the feature columns.

        Rows a ``drop`` policy would reject are scored with the fallback encoding and
        counted in the report, as ``predict`` does.
        """
        t0 = time.perf_counter()
        data = self._exported.transforms.encode(prediction_table(self.spec, table), dropped="keep")
        inputs = model_inputs(data, np.arange(data.num_rows, dtype=np.int64))
        t1 = time.perf_counter()
        with torch.inference_mode():
            scores = self._exported.module(*inputs).float().numpy()
        t2 = time.perf_counter()
        return BatchScores(scores, data.report, times=StageTimes(0.0, t1 - t0, t2 - t1))

    def score_rows(self, rows: Sequence[Mapping[str, Any]]) -> BatchScores:
        """Scores of raw feature rows (``{column: value}``, already checked)."""
        return self.score_table(rows_table(rows, self._columns, self._kinds))

    def score_entities(self, rows: Sequence[Mapping[str, Any]]) -> BatchScores:
        """Scores of entity rows (``{join key: value}``), features read from the store."""
        if self._reader is None:
            raise DataError(expected="a feature store (serve --feast-repo)", found="none")
        t0 = time.perf_counter()
        table, unknown, filled = self._reader.read(rows)
        t1 = time.perf_counter()
        out = self.score_table(table)
        out.unknown, out.filled = unknown, filled
        out.times.feature_read = t1 - t0
        return out

    def metadata(self) -> Dict[str, Any]:
        """What ``GET /metadata`` shows: version, tasks, features, training metrics."""
        manifest = self._exported.manifest
        by_column = {f.column: f for f in self.spec.features}
        meta: Dict[str, Any] = {
            "version": self._version,
            "model_dir": str(self._dir.resolve()),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._loaded_at)),
            "kind": manifest.get("kind"),
            "tasks": manifest["outputs"]["tasks"],
            "features": [
                {"name": f.name, "column": f.column, "type": f.type} for f in self.spec.features
            ],
            "columns": [
                {"name": c, "kind": self._kinds[c][0], "feature": by_column[c].name}
                for c in self._columns
            ],
            "training": training_summary(manifest),
            "torch": manifest.get("torch"),
        }
        if self._reader is not None:
            meta["feast"] = self._reader.describe()
        return meta


def rows_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    kinds: Mapping[str, Tuple[str, str]],
) -> pa.Table:
    """An Arrow table of checked raw rows, one typed column per feature column.

    ``number`` columns are float64, ``id`` columns int64, lists of them list arrays;
    ``category`` values are int64 when every value is an integer, else strings (as the
    saved vocabularies compare them).
    """
    arrays = []
    for c in columns:
        values = [r.get(c) for r in rows]
        kind, item = kinds[c]
        arrays.append(_typed_array(values, kind, item))
    return pa.table(arrays, names=list(columns))


def _typed_array(values: List[Any], kind: str, item: str) -> pa.Array:
    if kind == NUMBER:  # ints above 2**53 are not exact doubles: Arrow refuses them
        return pa.array([float(v) if isinstance(v, int) else v for v in values], pa.float64())
    if kind == ID:
        return pa.array(values, pa.int64())
    if kind == TEXT:
        return pa.array(values, pa.string())
    if kind == LIST:
        flat = [v for lst in values if lst is not None for v in lst]
        item_type = pa.int64() if item == ID or _all_int(flat) else pa.string()
        if item_type == pa.string():
            values = [None if v is None else [_as_str(x) for x in v] for v in values]
        return pa.array(values, pa.list_(item_type))
    if _all_int(values):
        return pa.array(values, pa.int64())
    return pa.array([_as_str(v) for v in values], pa.string())


def _all_int(values: Sequence[Any]) -> bool:
    return all(v is None or isinstance(v, int) for v in values)


def _as_str(v: Any) -> Any:
    return v if v is None or isinstance(v, str) else str(v)


def load_online_model(
    model_dir: Path,
    reader_factory: Optional[Callable[[Spec], FeastReader]] = None,
    attempts: int = 3,
) -> OnlineModel:
    """Load a model folder whole, even while ``export --overwrite`` replaces it.

    ``export`` renames a complete new folder into place: when the folder changed
    (another inode) while its files were read, they are read again.

    Args:
        model_dir (Path): the model folder.
        reader_factory (Optional[Callable[[Spec], FeastReader]]): builds the online store
            reader for the loaded model's features; None: raw values only.
        attempts (int): reads before giving up on a folder that keeps changing. Default: 3.

    Returns:
        OnlineModel: the model, warmed up.
    """
    model_dir = Path(model_dir)
    for _ in range(attempts):
        before = _inode(model_dir)
        exported = load_exported(model_dir)
        version = model_version(model_dir, exported.manifest)
        if _inode(model_dir) == before:
            break
    else:
        raise DataError(
            file=str(model_dir),
            expected="a model folder that stays in place while it is loaded",
            found=f"a folder replaced during each of {attempts} loads",
        )
    reader = reader_factory(exported.spec) if reader_factory is not None else None
    model = OnlineModel(model_dir, exported, version, reader)
    model.warm_up()
    return model


def _inode(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
