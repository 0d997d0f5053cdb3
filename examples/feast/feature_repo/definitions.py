"""Feature definitions of the example: one entity (user), one feature view, one service.

Field tags carry embedding settings that torchrec-ple reads (``num_embeddings``,
``embedding_dim``, ``pooling``); the training spec may override any of them.
"""

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int64, String

# Absolute on purpose: DuckDB reads a relative FileSource path from the working directory.
USERS_PARQUET = str(Path(__file__).resolve().parent.parent / "data" / "users.parquet")

user = Entity(name="user", join_keys=["user"], value_type=ValueType.INT64)

user_features = FeatureView(
    name="user_features",
    entities=[user],
    ttl=timedelta(days=10),
    source=FileSource(path=USERS_PARQUET, timestamp_field="event_timestamp"),
    schema=[
        Field(name="age", dtype=Float32),
        # An id-like int: ids 1..49, 0 reserved for "missing" (filled by train.py/serve.py).
        Field(name="city_id", dtype=Int64, tags={"num_embeddings": "50", "embedding_dim": "8"}),
        # A list feature: recently viewed item ids.
        Field(name="history", dtype=Array(Int64), tags={"embedding_dim": "8", "pooling": "mean"}),
        # The spec overrides this tag (embedding dim 4 in spec.yaml).
        Field(name="country", dtype=String, tags={"embedding_dim": "16"}),
    ],
)

user_service = FeatureService(name="user_service", features=[user_features])
