"""Generate the example's feature table and entity dataframe.

* ``data/users.parquet``: weekly user feature snapshots (the Feast FileSource):
  ``user``, ``event_timestamp``, ``age`` (float), ``city_id`` (int id, some nulls),
  ``history`` (list of item ids), ``country`` (string);
* ``data/entities.parquet``: entity rows for training: ``user``, ``event_timestamp`` and
  the labels ``click`` (binary) and ``spend`` (regression), drawn from the features
  valid at each event (a point-in-time join done here with pandas as ground truth);
* ``data/meta.json``: the time range, for ``serve.py``.

Usage: python make_data.py [--users 500] [--events 20000]
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
DAYS = 56
TTL_DAYS = 10  # feature_repo/definitions.py
COUNTRIES = ["de", "fr", "us", "jp", "br"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=500)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    DATA.mkdir(exist_ok=True)
    (HERE / "feature_repo" / "data").mkdir(exist_ok=True)

    # Weekly snapshots; every user starts at a random day, so early events find no row.
    rows = []
    base_age = rng.uniform(18, 75, args.users + 1)
    home_city = rng.integers(1, 50, args.users + 1)
    for u in range(1, args.users + 1):
        start = int(rng.integers(0, 14))
        for day in range(start, DAYS, 7):
            n_hist = int(rng.integers(0, 9))
            rows.append(
                {
                    "user": u,
                    "event_timestamp": T0
                    + timedelta(days=day, seconds=int(rng.integers(0, 86400))),
                    "age": np.float32(base_age[u] + day / 365),
                    # ~3% of snapshots lack the city: an int column with nulls.
                    "city_id": None if rng.random() < 0.03 else int(home_city[u]),
                    "history": [int(x) for x in rng.integers(0, 200, n_hist)],
                    "country": COUNTRIES[u % len(COUNTRIES)],
                }
            )
    users = pd.DataFrame(rows)
    users["city_id"] = users["city_id"].astype("Int64")
    users.to_parquet(DATA / "users.parquet", index=False)

    # Events: mostly known users, a few unknown ones (ids above --users).
    events = pd.DataFrame(
        {
            "user": rng.integers(1, args.users + 20, args.events),
            "event_timestamp": [
                T0 + timedelta(seconds=int(s)) for s in rng.integers(0, DAYS * 86400, args.events)
            ],
        }
    )
    # Ground truth from the snapshot valid at the event (inside the TTL), as Feast joins it.
    joined = pd.merge_asof(
        events.reset_index().sort_values("event_timestamp"),
        users.sort_values("event_timestamp").rename(columns={"event_timestamp": "feature_ts"}),
        left_on="event_timestamp",
        right_on="feature_ts",
        by="user",
        direction="backward",
        tolerance=pd.Timedelta(days=TTL_DAYS),
    ).sort_values("index")
    age = joined["age"].fillna(45.0).to_numpy()
    city = joined["city_id"].fillna(0).to_numpy(dtype=np.int64)
    hist_len = joined["history"].map(lambda h: len(h) if isinstance(h, (list, np.ndarray)) else 0)
    logit = 0.04 * (age - 45) + np.where(city % 3 == 0, 1.0, -0.5) + 0.2 * (hist_len.to_numpy() - 4)
    events["click"] = (rng.random(args.events) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    events["spend"] = np.round(
        np.exp(0.02 * (age - 45) + 0.1 * hist_len.to_numpy()) * rng.gamma(2, 0.5, args.events), 2
    )
    events.to_parquet(DATA / "entities.parquet", index=False)

    end = T0 + timedelta(days=DAYS)
    meta = {"t0": T0.isoformat(), "end": end.isoformat(), "ttl_days": TTL_DAYS, "users": args.users}
    (DATA / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {len(users)} feature rows and {len(events)} entity rows under {DATA}")


if __name__ == "__main__":
    main()
