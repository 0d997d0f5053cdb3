"""Feast source: point-in-time rows, tags -> embedding configs, training, online == offline.

Skipped when Feast is not installed (``pip install -r requirements/feast.txt``).
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

feast = pytest.importorskip("feast")

from feast import (  # noqa: E402
    Entity,
    FeatureService,
    FeatureStore,
    FeatureView,
    Field,
    FileSource,
    RepoConfig,
    ValueType,
)
from feast.types import Array, Float32, Int64, String  # noqa: E402

from torchrec_ple.data import feast as tf  # noqa: E402
from torchrec_ple.spec import DataError, parse_spec  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
TTL = timedelta(days=3)
END = T0 + timedelta(days=10)
NUM_USERS = 60
COUNTRIES = ["de", "fr", "us", "jp"]


def _config(root: Path, offline: str = "duckdb") -> RepoConfig:
    return RepoConfig(
        project="tests",
        provider="local",
        registry=str(root / "registry.db"),
        offline_store={"type": offline},
        online_store={"type": "sqlite", "path": str(root / "online.db")},
        repo_path=root,
        entity_key_serialization_version=3,
    )


def _user_rows(rng: np.random.Generator) -> pa.Table:
    """Feature rows: users 1..NUM_USERS every 2 days from T0; user 2 only from day 4."""
    users, times = [], []
    for u in range(1, NUM_USERS + 1):
        for day in range(0, 10, 2):
            if u == 2 and day < 4:
                continue
            users.append(u)
            times.append(T0 + timedelta(days=day, hours=u % 5))
    n = len(users)
    city = rng.integers(1, 20, n)
    # A few nulls inside the feature table: an int column with nulls.
    city_arr = pa.array(city, pa.int64(), mask=np.arange(n) % 17 == 5)
    lengths = rng.integers(0, 4, n)
    history = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32()),
        pa.array(rng.integers(0, 50, int(lengths.sum())), pa.int64()),
    )
    return pa.table(
        {
            "user": pa.array(users, pa.int64()),
            "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            "age": pa.array(rng.uniform(18, 80, n).astype(np.float32)),
            "city_id": city_arr,
            "history": history,
            "country": pa.array(rng.choice(COUNTRIES, n)),
        }
    )


def write_repo_yaml(root: Path) -> None:
    """``root/feature_store.yaml`` as a user has it on disk beside the applied registry."""
    (root / "feature_store.yaml").write_text(
        yaml.safe_dump(
            {
                "project": "tests",
                "provider": "local",
                "registry": str(root / "registry.db"),
                "offline_store": {"type": "duckdb"},
                "online_store": {"type": "sqlite", "path": str(root / "online.db")},
                "entity_key_serialization_version": 3,
            }
        )
    )


def apply_user_repo(root: Path, tags: bool = True) -> FeatureStore:
    """The users feature repo in ``root`` (users 1..NUM_USERS, seed 0), applied: one entity,
    the ``user_features`` view and the ``user_service`` service; with ``tags``, the
    embedding tags a ``source: feast`` spec reads."""
    pq.write_table(_user_rows(np.random.default_rng(0)), root / "users.parquet")
    store = FeatureStore(config=_config(root))
    user = Entity(name="user", join_keys=["user"], value_type=ValueType.INT64)
    t = (
        {
            "city_id": {"num_embeddings": "20", "embedding_dim": "4"},
            "history": {"embedding_dim": "4", "pooling": "mean"},
            "country": {"embedding_dim": "8"},
        }
        if tags
        else {}
    )
    view = FeatureView(
        name="user_features",
        entities=[user],
        ttl=TTL,
        source=FileSource(path=str(root / "users.parquet"), timestamp_field="event_timestamp"),
        schema=[
            Field(name="age", dtype=Float32),
            Field(name="city_id", dtype=Int64, tags=t.get("city_id", {})),
            Field(name="history", dtype=Array(Int64), tags=t.get("history", {})),
            Field(name="country", dtype=String, tags=t.get("country", {})),
        ],
    )
    store.apply([user, view, FeatureService(name="user_service", features=[view])])
    return store


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    root = tmp_path_factory.mktemp("feast_repo")
    store = apply_user_repo(root)
    return {"root": root, "store": store, "service": "user_service"}


def test_point_in_time_rows(repo) -> None:
    store = repo["store"]
    import pandas as pd

    entity = pd.DataFrame(
        {
            "user": [2, 1, 1, 999, 1, 1],
            "event_timestamp": [
                T0 + timedelta(days=1),  # before user 2's first feature row
                END + timedelta(days=5),  # past the TTL of the last row
                T0 + timedelta(days=3),
                T0 + timedelta(days=3),  # unknown entity
                T0 + timedelta(days=5),  # the same entity and timestamp twice
                T0 + timedelta(days=5),
            ],
            "click": [0, 1, 0, 1, 1, 0],
        }
    )
    table = tf.historical_table(store, entity, repo["service"])
    assert table.num_rows == 6  # DuckDB keeps both duplicates (the file store drops one)
    assert table.column_names[:3] == ["user", "event_timestamp", "click"]
    assert table["click"].to_pylist() == [0, 1, 0, 1, 1, 0]  # entity row order kept
    age = table["age"].to_pylist()
    assert age[0] is None and age[1] is None and age[3] is None
    assert age[2] is not None and age[4] == age[5] is not None
    assert pa.types.is_integer(table.schema.field("city_id").type)  # not float with nulls
    assert pa.types.is_list(table.schema.field("history").type)


def test_tags_to_embedding_configs(repo) -> None:
    from torchrec_ple.data.transforms import FeatureTransforms
    from torchrec_ple.models.builder import embedding_bag_configs

    tags = tf.feature_tags(repo["store"], repo["service"])
    assert tags["city_id"] == {"num_embeddings": "20", "embedding_dim": "4"}
    assert tags["age"] == {}
    raw = _raw_spec("unused.parquet")
    raw["features"][3]["embedding"] = {"dim": 6}  # YAML overrides the tag (8)
    merged = tf.merge_feature_tags(raw, tags)
    assert raw["features"][1] == {"name": "city_id", "type": "categorical"}  # not mutated
    by_name = {f["name"]: f for f in merged["features"]}
    assert by_name["city_id"]["num_embeddings"] == 20
    assert by_name["history"]["embedding"] == {"dim": 4, "pooling": "mean"}
    assert by_name["country"]["embedding"] == {"dim": 6}
    assert "embedding" not in by_name["age"]
    spec = parse_spec(yaml.safe_dump(merged))
    vocabs = {
        "country": {"type": "string", "values": COUNTRIES},
        "history": {"type": "int64", "values": list(range(50))},
    }
    transforms = FeatureTransforms(
        spec, {"version": 1, "vocabs": vocabs, "numeric": {}, "buckets": {}}
    )
    configs = {c.name: c for c in embedding_bag_configs(transforms.tables())}
    assert (configs["t_city_id"].num_embeddings, configs["t_city_id"].embedding_dim) == (20, 4)
    assert configs["t_history"].pooling.name == "MEAN" and configs["t_country"].embedding_dim == 6
    with pytest.raises(DataError, match="embedding_dim"):
        tf.merge_feature_tags(raw, {"city_id": {"embedding_dim": "four"}})


def test_store_checks(repo, tmp_path: Path) -> None:
    file_store = FeatureStore(config=_config(tmp_path, offline="file"))
    with pytest.warns(tf.FeastOfflineStoreWarning, match="6787"):
        tf.check_offline_store(file_store)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tf.FeastOfflineStoreWarning)
        assert tf.check_offline_store(repo["store"]) == []
    user = Entity(name="user", join_keys=["user"], value_type=ValueType.INT64)
    rel = FeatureView(
        name="relative",
        entities=[user],
        ttl=TTL,
        source=FileSource(path="data/users.parquet", timestamp_field="event_timestamp"),
        schema=[Field(name="age", dtype=Float32)],
    )
    file_store.apply([user, rel], skip_feature_view_validation=True)
    with pytest.raises(DataError, match="absolute path"):
        tf.check_sources(file_store, ["relative:age"])


def _raw_spec(train: str, valid: str | None = None) -> Dict[str, Any]:
    data: Dict[str, Any] = {"train": {"path": train}}
    if valid is not None:
        data["validation"] = {"path": valid}
    return {
        "data": data,
        "features": [
            {"name": "age", "type": "numeric"},
            {"name": "city_id", "type": "categorical"},
            {"name": "history", "type": "sequence"},
            {"name": "country", "type": "categorical"},
        ],
        "tasks": [{"name": "click", "label": "click", "type": "binary"}],
        "model": {"architecture": "ple", "levels": 1, "expert_dims": [8], "tower_dims": [4]},
        "train": {"batch_size": 128, "epochs": 1, "progress": False},
    }


def test_train_from_feast_and_online_equals_offline(repo, tmp_path: Path) -> None:
    import pandas as pd

    from torchrec_ple.serving.predict import load_scorer
    from torchrec_ple.train.trainer import fit

    store = repo["store"]
    rng = np.random.default_rng(1)
    n = 1200
    entity = pd.DataFrame(
        {
            "user": rng.integers(1, NUM_USERS + 3, n),  # a few unknown users
            "event_timestamp": [T0 + timedelta(hours=int(h)) for h in rng.integers(0, 24 * 12, n)],
        }
    )
    entity["click"] = (entity["user"] % 3 == 0).astype(np.int64)
    entity.to_parquet(tmp_path / "entities.parquet")
    train, valid = tf.load_feast_tables(
        store, repo["service"], tmp_path / "entities.parquet", split="time", fill={"city_id": 0}
    )
    assert train.num_rows + valid.num_rows == n
    assert train.column("city_id").null_count == 0
    pq.write_table(train, tmp_path / "train.parquet")
    pq.write_table(valid, tmp_path / "valid.parquet")
    raw = tf.merge_feature_tags(
        _raw_spec(str(tmp_path / "train.parquet"), str(tmp_path / "valid.parquet")),
        tf.feature_tags(store, repo["service"]),
    )
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    spec = parse_spec((tmp_path / "spec.yaml").read_text(), tmp_path / "spec.yaml")
    metrics = fit(spec, tmp_path / "run", log=lambda s: None)
    assert metrics["tasks"]["click"]["count"] == valid.num_rows

    # Online: materialize exactly the TTL window before END, read, score.
    store.materialize(END - TTL, END)
    users = list(range(1, NUM_USERS + 3))
    online = tf.fill_nulls(tf.online_table(store, repo["service"], {"user": users}), {"city_id": 0})
    assert online["user"].to_pylist() == users
    offline = tf.historical_table(
        store, pd.DataFrame({"user": users, "event_timestamp": [END] * len(users)}), repo["service"]
    )
    offline = tf.fill_nulls(offline, {"city_id": 0})
    assert online["age"].null_count == offline["age"].null_count > 0  # unknown users
    scorer = load_scorer(tmp_path / "run")
    np.testing.assert_allclose(
        scorer.score_table(online), scorer.score_table(offline), rtol=1e-5, atol=1e-6
    )


def test_spec_with_feast_source_takes_tags_and_trains(repo, tmp_path: Path) -> None:
    import pandas as pd

    from torchrec_ple.data.sources import load_tables
    from torchrec_ple.spec import SpecError, load_spec
    from torchrec_ple.train.trainer import fit

    rng = np.random.default_rng(2)
    n = 600
    entity = pd.DataFrame(
        {
            "user": rng.integers(1, NUM_USERS + 1, n),
            "event_timestamp": [T0 + timedelta(hours=int(h)) for h in rng.integers(24, 24 * 9, n)],
        }
    )
    entity["click"] = (entity["user"] % 3 == 0).astype(np.int64)
    entity.to_parquet(tmp_path / "entities.parquet")
    root = repo["root"]
    # The repo as a user has it on disk: a feature_store.yaml beside the registry.
    write_repo_yaml(root)
    raw = _raw_spec("unused.parquet")
    raw["data"] = {
        "source": "feast",
        "validation_fraction": 0.25,
        "feast": {
            "repo_path": str(repo["root"]),
            "entity_df": "entities.parquet",  # relative to the spec file
            "feature_service": repo["service"],
            "split": "time",
            "fill": {"city_id": 0},
        },
    }
    raw["features"][2]["embedding"] = {"pooling": "sum"}  # the YAML overrides the tag (mean)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    city = next(f for f in spec.features if f.name == "city_id")
    history = next(f for f in spec.features if f.name == "history")
    assert city.num_embeddings == 20 and city.embedding.dim == 4  # from the Feast tags
    assert history.embedding.pooling == "sum" and history.embedding.dim == 4
    train, valid = load_tables(spec)
    assert train.num_rows + valid.num_rows == n and valid.num_rows == 150
    metrics = fit(spec, tmp_path / "run", log=lambda s: None)
    assert metrics["tasks"]["click"]["count"] == 150
    raw["data"]["feast"]["feature_service"] = "no_such_service"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"data\.feast.*no_such_service"):
        load_spec(path)
