"""The body of ``POST /score``, checked: every refusal is one message naming the field.

A body holds exactly one of:

* ``entities``: rows of join-key values, read from the online store: a list of objects
  (``[{"user": 1}, {"user": 2}]``) or an object of equal-length lists (``{"user": [1, 2]}``);
* ``features``: rows of raw feature values, no feature store needed:
  ``[{"age": 31.5, "city_id": 4, "history": [3, 9], "country": "de"}]``; every feature
  column of the model, ``null`` for a missing value (filled as ``predict`` fills it).

Statuses: 400 for a body that is not a JSON object, 413 for more rows (or bytes) than the
server takes, 422 for a field of the wrong type, a missing or unknown key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torchrec_ple.serving.online import CATEGORY, ID, LIST, NUMBER, TEXT

ENTITIES, FEATURES = "entities", "features"


class RequestError(Exception):
    """A refused request: an HTTP status and one line naming the field.

    Args:
        status (int): the HTTP status (4xx).
        field (str): where in the body, e.g. ``entities[2].user``.
        message (str): what was expected and what was found.
    """

    def __init__(self, status: int, field: str, message: str) -> None:
        self.status = status
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")

    def payload(self) -> Dict[str, Any]:
        """The JSON body of the error response."""
        return {"error": str(self), "field": self.field}


@dataclass
class ScoreRequest:
    """A checked ``POST /score`` body.

    Args:
        kind (str): ``entities`` or ``features``.
        rows (List[Dict[str, Any]]): one mapping per row, in request order.
    """

    kind: str
    rows: List[Dict[str, Any]]


def _show(value: Any) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_body(body: bytes, max_bytes: int) -> Dict[str, Any]:
    """The JSON object of a request body.

    Raises:
        RequestError: 413 over ``max_bytes``; 400 not JSON, or not an object.
    """
    if len(body) > max_bytes:
        raise RequestError(413, "body", f"at most {max_bytes} bytes, found {len(body)}")
    if not body.strip():
        raise RequestError(400, "body", "a JSON object, found an empty body")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RequestError(400, "body", f"a JSON object, found invalid JSON ({reason})") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body", f"a JSON object, found {type(data).__name__}")
    return data


def parse_score_request(
    data: Mapping[str, Any],
    columns: Sequence[str],
    kinds: Mapping[str, Tuple[str, str]],
    join_keys: Optional[Mapping[str, str]],
    max_rows: int,
) -> ScoreRequest:
    """Check a ``POST /score`` body against the model (and its feature store).

    Args:
        data (Mapping[str, Any]): the parsed JSON object.
        columns (Sequence[str]): the model's raw feature columns.
        kinds (Mapping[str, Tuple[str, str]]): what each column holds
            (:func:`~torchrec_ple.serving.online.column_kinds`).
        join_keys (Optional[Mapping[str, str]]): the store's join keys and their kinds;
            None when the server reads no feature store.
        max_rows (int): the most rows one request may hold.

    Raises:
        RequestError: the first problem found (400, 413 or 422).
    """
    present = [k for k in (ENTITIES, FEATURES) if k in data]
    unknown = [k for k in data if k not in (ENTITIES, FEATURES)]
    if unknown:
        raise RequestError(422, unknown[0], "unknown key (expected 'entities' or 'features')")
    if len(present) != 1:
        found = "both" if present else "neither"
        raise RequestError(422, "body", f"exactly one of 'entities' or 'features', found {found}")
    kind = present[0]
    if kind == ENTITIES:
        if join_keys is None:
            raise RequestError(
                422,
                ENTITIES,
                "raw 'features' (this server reads no feature store: start it with "
                "--feast-repo to score entity keys)",
            )
        rows = _rows(data[ENTITIES], ENTITIES, max_rows, columnar=True)
        for i, row in enumerate(rows):
            _check_entity(row, f"{ENTITIES}[{i}]", join_keys)
    else:
        rows = _rows(data[FEATURES], FEATURES, max_rows, columnar=False)
        for i, row in enumerate(rows):
            _check_features(row, f"{FEATURES}[{i}]", columns, kinds)
    return ScoreRequest(kind, rows)


def _rows(value: Any, field: str, max_rows: int, columnar: bool) -> List[Dict[str, Any]]:
    """The rows of a list of objects (or, if ``columnar``, an object of equal lists)."""
    if columnar and isinstance(value, dict):
        value = _columns_to_rows(value, field, max_rows)
    if not isinstance(value, list):
        shape = "a list of objects" + (" or an object of lists" if columnar else "")
        raise RequestError(422, field, f"{shape}, found {type(value).__name__}")
    if not value:
        raise RequestError(422, field, "at least one row, found an empty list")
    if len(value) > max_rows:
        raise RequestError(413, field, f"at most {max_rows} rows per request, found {len(value)}")
    for i, row in enumerate(value):
        if not isinstance(row, dict):
            raise RequestError(422, f"{field}[{i}]", f"an object, found {_show(row)}")
    return value


def _columns_to_rows(value: Dict[str, Any], field: str, max_rows: int) -> List[Dict[str, Any]]:
    lengths = {}
    for key, col in value.items():
        if not isinstance(col, list):
            raise RequestError(422, f"{field}.{key}", f"a list of values, found {_show(col)}")
        lengths[key] = len(col)
    if len(set(lengths.values())) > 1:
        raise RequestError(422, field, f"lists of one length, found lengths {lengths}")
    n = next(iter(lengths.values()), 0)
    if n > max_rows:
        raise RequestError(413, field, f"at most {max_rows} rows per request, found {n}")
    return [{k: col[i] for k, col in value.items()} for i in range(n)]


def _check_entity(row: Dict[str, Any], where: str, join_keys: Mapping[str, str]) -> None:
    for key in row:
        if key not in join_keys:
            raise RequestError(
                422, f"{where}.{key}", f"unknown key (expected the join keys {list(join_keys)})"
            )
    for key, kind in join_keys.items():
        if key not in row:
            raise RequestError(
                422, where, f"the join key '{key}' (expected keys {list(join_keys)}), found none"
            )
        value = row[key]
        if kind == "int" and not _is_int(value):
            raise RequestError(422, f"{where}.{key}", f"an integer, found {_show(value)}")
        if kind == "str" and not isinstance(value, str):
            raise RequestError(422, f"{where}.{key}", f"a string, found {_show(value)}")
        if kind == "any" and not (isinstance(value, str) or _is_int(value)):
            raise RequestError(
                422, f"{where}.{key}", f"a string or an integer, found {_show(value)}"
            )


def _check_features(
    row: Dict[str, Any],
    where: str,
    columns: Sequence[str],
    kinds: Mapping[str, Tuple[str, str]],
) -> None:
    for key in row:
        if key not in kinds:
            raise RequestError(
                422, f"{where}.{key}", f"unknown column (expected the columns {list(columns)})"
            )
    for c in columns:
        if c not in row:
            raise RequestError(
                422,
                where,
                f"the column '{c}' (null for a missing value; expected columns "
                f"{list(columns)}), found none",
            )
        problem = _value_problem(row[c], *kinds[c])
        if problem is not None:
            raise RequestError(422, f"{where}.{c}", f"{problem}, found {_show(row[c])}")


_INT64 = 2**63


def _is_int(v: Any) -> bool:
    """An integer that fits int64 (JSON has no bound; the ids and join keys do)."""
    return isinstance(v, int) and not isinstance(v, bool) and -_INT64 <= v < _INT64


def _is_number(v: Any) -> bool:
    return isinstance(v, float) or _is_int(v)


def _value_problem(value: Any, kind: str, item: str) -> Optional[str]:
    """What a raw value should have been (None: it is fine)."""
    if value is None:
        return None
    if kind == NUMBER and not _is_number(value):
        return "a number or null"
    if kind == ID and not _is_int(value):
        return "an integer id or null"
    if kind == TEXT and not isinstance(value, str):
        return "a string or null"
    if kind == CATEGORY and not (isinstance(value, str) or _is_int(value)):
        return "a string, an integer or null"
    if kind == LIST:
        ok = _is_int if item == ID else (lambda v: isinstance(v, str) or _is_int(v))
        if not isinstance(value, list) or not all(ok(v) for v in value):
            what = "integer ids" if item == ID else "strings or integers"
            return f"a list of {what}, or null"
    return None
