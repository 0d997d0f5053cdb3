"""Online scoring from Feast with the exported model, checked against offline scores.

1. ``materialize(END - TTL, END)`` loads the feature rows of the last TTL window into the
   SQLite online store (explicit bounds, not ``materialize_incremental``);
2. ``get_online_features`` for some users -> Arrow (``online_table``) -> the saved
   transforms -> the exported ``torch.export`` program;
3. the same users at timestamp END through ``get_historical_features`` (offline, point in
   time) -> same model: the scores must be equal.

Usage: python serve.py [--model runs/demo/model] [--users 1 2 3 ...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from datetime import datetime, timedelta  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from torchrec_ple.data.feast import (  # noqa: E402
    fill_nulls,
    historical_table,
    online_table,
    open_store,
)

HERE = Path(__file__).resolve().parent
FILL = {"city_id": 0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=HERE / "runs" / "demo" / "model")
    p.add_argument("--users", type=int, nargs="*", default=None)
    args = p.parse_args()
    meta = json.loads((HERE / "data" / "meta.json").read_text())
    end = datetime.fromisoformat(meta["end"])
    ttl = timedelta(days=meta["ttl_days"])
    users = args.users or [1, 2, 3, 4, 5, 42, 99, 250, meta["users"] + 7]  # the last is unknown

    store = open_store(HERE / "feature_repo")
    store.materialize(start_date=end - ttl, end_date=end)

    from torchrec_ple.serving.export import load_exported
    from torchrec_ple.serving.predict import model_inputs, prediction_table

    model = load_exported(args.model)  # torch.export program; no pickle
    tasks = [t["name"] for t in model.manifest["outputs"]["tasks"]]

    def score(table):
        # Saved transforms (label columns absent: null ones are added), then the program.
        data = model.transforms.encode(prediction_table(model.spec, table))
        return model(*model_inputs(data, np.arange(data.num_rows))).numpy()

    online = fill_nulls(online_table(store, "user_service", {"user": users}), FILL)
    online_scores = score(online)

    entity_df = pd.DataFrame({"user": users, "event_timestamp": [end] * len(users)})
    offline = fill_nulls(historical_table(store, entity_df, "user_service"), FILL)
    offline_scores = score(offline)

    frame = pd.DataFrame({"user": users})
    for k, t in enumerate(tasks):
        frame[f"{t} (online)"] = online_scores[:, k]
        frame[f"{t} (offline)"] = offline_scores[:, k]
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    diff = float(np.abs(online_scores - offline_scores).max())
    print(f"max |online - offline| = {diff:.2e}")
    if not np.allclose(online_scores, offline_scores, rtol=1e-5, atol=1e-6):
        print("online and offline scores differ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
