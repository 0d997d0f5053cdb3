"""``torchrec-ple serve``'s requests: every bad request gets its status and one message
naming the field, and the server lives on; entity keys read from Feast score as the
offline store's rows do (to 1e-6). Skipped without fastapi/uvicorn (the Feast extra); the
Feast tests also need feast.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from tests.serve_helpers import _metric, _scores, call, serving  # noqa: E402
from torchrec_ple.serving.server import ServeSettings  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


# --------------------------------------------------------------------------- bad requests

BAD_REQUESTS: List[Tuple[str, Any, int, str, str]] = [
    # (what, body (bytes: sent as is), status, field, part of the message)
    ("not JSON", b"{user: 1}", 400, "body", "invalid JSON"),
    ("empty body", b"", 400, "body", "found an empty body"),
    ("nested too deep", b"[" * 100_000, 400, "body", "invalid JSON"),
    ("not an object", b"[1, 2]", 400, "body", "found list"),
    ("neither key", {}, 422, "body", "exactly one of 'entities' or 'features', found neither"),
    ("both keys", {"entities": [], "features": []}, 422, "body", "found both"),
    ("unknown key", {"features": [], "rows": 1}, 422, "rows", "unknown key"),
    ("features not a list", {"features": {"age": [1]}}, 422, "features", "a list of objects"),
    ("no rows", {"features": []}, 422, "features", "at least one row"),
    ("row not an object", {"features": [1]}, 422, "features[0]", "an object, found 1"),
    (
        "missing column",
        {"features": [{"age": 1.0, "city_id": 1, "history": []}]},
        422,
        "features[0]",
        "the column 'country'",
    ),
    (
        "unknown column",
        {"features": [{"age": 1.0, "city_id": 1, "history": [], "country": "de", "agee": 2}]},
        422,
        "features[0].agee",
        "unknown column",
    ),
    (
        "number as text",
        {"features": [{"age": "31", "city_id": 1, "history": [], "country": "de"}]},
        422,
        "features[0].age",
        'a number or null, found "31"',
    ),
    (
        "fractional id",
        {"features": [{"age": 31, "city_id": 1.5, "history": [], "country": "de"}]},
        422,
        "features[0].city_id",
        "an integer id or null, found 1.5",
    ),
    (
        "id beyond int64",
        {"features": [{"age": 31, "city_id": 2**64, "history": [], "country": "de"}]},
        422,
        "features[0].city_id",
        "an integer id or null, found 18446744073709551616",
    ),
    (
        "list of objects",
        {"features": [{"age": 31, "city_id": 1, "history": [{"id": 1}], "country": "de"}]},
        422,
        "features[0].history",
        "a list of strings or integers",
    ),
    (
        "boolean category",
        {"features": [{"age": 31, "city_id": 1, "history": [], "country": True}]},
        422,
        "features[0].country",
        "a string, an integer or null, found true",
    ),
    (
        "entities without a store",
        {"entities": [{"user": 1}]},
        422,
        "entities",
        "this server reads no feature store",
    ),
    (
        "too many rows",
        {"features": [{"age": 1.0, "city_id": 1, "history": [], "country": "de"}] * 6},
        413,
        "features",
        "at most 5 rows per request, found 6",
    ),
    ("oversized body", b'{"features": [' + b" " * 200_000 + b"]}", 413, "body", "at most"),
    (
        "id out of range (the model's policy)",
        {"features": [{"age": 31.0, "city_id": 99, "history": [], "country": "de"}]},
        422,
        "city_id",
        "integer ids in [0, 20)",
    ),
]


def test_bad_requests(models) -> None:
    good = {"features": [{"age": 31.0, "city_id": 4, "history": [3], "country": "de"}]}
    with serving(ServeSettings(models["a"], port=0, max_rows=5)) as addr:
        for what, body, status, field, fragment in BAD_REQUESTS:
            raw = body if isinstance(body, bytes) else None
            got, _, out = call(addr, "POST", "/score", None if raw is not None else body, raw)
            assert got == status, (what, out)
            assert out["field"] == field, (what, out)
            assert fragment in out["error"] and "\n" not in out["error"], (what, out)
        for method, path, status in (("GET", "/nope", 404), ("GET", "/score", 405)):
            got, _, out = call(addr, method, path)
            assert got == status and out["field"] == "path", out
            assert f"found {method} {path}" in out["error"]
        # the server lives on: a good request still scores, every refusal was counted
        got, _, out = call(addr, "POST", "/score", good)
        assert got == 200 and len(out["scores"]) == 1
        big = {"features": [dict(good["features"][0], age=2**60)]}  # a number, not exact
        assert call(addr, "POST", "/score", big)[0] == 200
        _, _, text = call(addr, "GET", "/metrics")
        errors = sum(
            _metric(text, "torchrec_ple_request_errors_total", endpoint="/score", status=s)
            for s in ("400", "413", "422")
        )
        assert errors == len(BAD_REQUESTS)


# ----------------------------------------------------------------------------- Feast


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """tests/test_feast.py's repo (users 1..60), materialized for the TTL before END."""
    pytest.importorskip("feast")
    from tests.test_feast import END, TTL, apply_user_repo, write_repo_yaml

    root = tmp_path_factory.mktemp("serve_feast")
    store = apply_user_repo(root, tags=False)
    store.materialize(END - TTL, END)
    write_repo_yaml(root)
    return {"root": root, "store": store, "end": END}


def test_entity_scores_equal_offline(models, feast_repo) -> None:
    import pandas as pd

    from torchrec_ple.data.feast import fill_nulls, historical_table
    from torchrec_ple.serving.predict import load_scorer

    users = [5, 61, 1, 2, 33, 62, 60, 17]  # 61, 62: unknown to Feast
    entity = pd.DataFrame({"user": users, "event_timestamp": [feast_repo["end"]] * len(users)})
    raw_offline = historical_table(feast_repo["store"], entity, "user_service")
    offline = fill_nulls(raw_offline, {"city_id": 0})
    with_city = [u for u, c in zip(users, raw_offline["city_id"].to_pylist()) if c is not None]
    expected = load_scorer(models["a"]).score_table(offline)
    settings = ServeSettings(
        models["a"], feast_repo=feast_repo["root"], fill={"city_id": 0}, port=0
    )
    with serving(settings) as addr:
        status, _, out = call(addr, "POST", "/score", {"entities": [{"user": u} for u in users]})
        assert status == 200, out
        np.testing.assert_allclose(_scores(out), expected, rtol=0, atol=1e-6)
        status, _, columnar = call(addr, "POST", "/score", {"entities": {"user": users[:3]}})
        assert status == 200
        np.testing.assert_allclose(_scores(columnar), expected[:3], rtol=0, atol=1e-6)
        status, _, meta = call(addr, "GET", "/metadata")
        assert meta["feast"]["entity_keys"] == {"user": "int"}
        assert meta["feast"]["refs"] == [f"user_features:{c}" for c in meta_columns(meta)]
        _, _, text = call(addr, "GET", "/metrics")
        assert _metric(text, "torchrec_ple_unknown_entities_total") == 3  # 61, 62, then 61
        assert (
            _metric(text, "torchrec_ple_rows_filled_total", feature="city_id", reason="fill") >= 3
        )
        assert _metric(text, "torchrec_ple_stage_seconds_count", stage="feature_read") == 2
        for body, field, fragment in (
            ({"entities": [{"usr": 1}]}, "entities[0].usr", "unknown key"),
            ({"entities": [{}]}, "entities[0]", "the join key 'user'"),
            ({"entities": [{"user": "1"}]}, "entities[0].user", 'an integer, found "1"'),
            ({"entities": {"user": [1, 2], "x": [1]}}, "entities", "lists of one length"),
        ):
            status, _, err = call(addr, "POST", "/score", body)
            assert status == 422 and err["field"] == field and fragment in err["error"], err
    # without --fill, an unknown entity's missing id is refused, saying what to do
    with serving(ServeSettings(models["a"], feast_repo=feast_repo["root"], port=0)) as addr:
        status, _, err = call(addr, "POST", "/score", {"entities": [{"user": 61}]})
        assert status == 422 and err["field"] == "city_id", err
        assert "start serve with --fill city_id=VALUE" in err["error"]
        assert call(addr, "POST", "/score", {"entities": [{"user": with_city[0]}]})[0] == 200


def meta_columns(meta: Dict[str, Any]) -> List[str]:
    return [c["name"] for c in meta["columns"]]


def test_feast_features_found_by_name_or_refused(models, feast_repo) -> None:
    from torchrec_ple.serving.export import load_saved_spec
    from torchrec_ple.serving.feast_online import feast_reader_factory
    from torchrec_ple.spec import DataError

    spec = load_saved_spec(models["a"])
    reader = feast_reader_factory(feast_repo["store"])(spec)  # no service: views by name
    assert reader.describe()["refs"] == [
        f"user_features:{c}" for c in ("age", "city_id", "history", "country")
    ]
    table, unknown, filled = reader.read([{"user": 1}, {"user": 999}])
    assert table.num_rows == 2 and unknown == 1 and filled == {}
    with pytest.raises(DataError, match="no_such_service"):
        feast_reader_factory(feast_repo["store"], "no_such_service")(spec)
    with pytest.raises(DataError, match="--fill column"):
        feast_reader_factory(feast_repo["store"], fill={"nope": 0})(spec)
