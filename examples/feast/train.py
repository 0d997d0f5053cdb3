"""Train from Feast: point-in-time features -> Parquet -> the library's fit -> export.

1. ``load_feast_tables``: ``get_historical_features(entity_df, user_service).to_arrow()``
   for the entity rows of ``data/entities.parquet``, split by time (latest 20% validate);
   the nulls of the identity-mapped ``city_id`` (no feature row inside the TTL, unknown
   users) are filled with its reserved id 0;
2. the tables are written to ``data/{train,validation}.parquet``, which ``spec.yaml``
   reads with the ordinary ``files`` source;
3. the Feast field tags fill the spec's embedding settings (``merge_feature_tags``; keys
   in spec.yaml win); the resolved spec is written next to the run;
4. ``fit`` trains (DMP, world size 1) and ``export_model`` writes the serving folder.

Usage: python train.py [--out runs/demo] [--epochs N]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see torchrec_ple.cli)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from torchrec_ple.data.feast import (  # noqa: E402
    feature_tags,
    load_feast_tables,
    merge_feature_tags,
    open_store,
)
from torchrec_ple.spec import parse_spec  # noqa: E402

HERE = Path(__file__).resolve().parent
FILL = {"city_id": 0}  # the id reserved for "missing" in feature_repo/definitions.py


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / "runs" / "demo")
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    store = open_store(HERE / "feature_repo")
    train, valid = load_feast_tables(
        store,
        "user_service",
        HERE / "data" / "entities.parquet",
        validation_fraction=0.2,
        split="time",
        fill=FILL,
    )
    pq.write_table(train, HERE / "data" / "train.parquet")
    pq.write_table(valid, HERE / "data" / "validation.parquet")
    missing = train.column("age").null_count
    print(
        f"feast: {train.num_rows} train / {valid.num_rows} validation rows "
        f"({missing} training rows without features inside the TTL)"
    )

    raw = yaml.safe_load((HERE / "spec.yaml").read_text())
    raw = merge_feature_tags(raw, feature_tags(store, "user_service"))
    resolved = out / "spec.feast.yaml"
    resolved.write_text(yaml.safe_dump(raw, sort_keys=False))
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    # Data paths in spec.yaml are relative to this folder.
    spec = parse_spec(resolved.read_text(), HERE / "spec.yaml", overrides)

    from torchrec_ple.serving.export import export_model
    from torchrec_ple.train.trainer import fit

    # The example's own run folder: running it again replaces its earlier run (fit logs
    # what it replaced) and its earlier export.
    metrics = fit(spec, out, overwrite=True)
    for task, m in metrics["tasks"].items():
        print(f"{task}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)))
    model_dir = export_model(spec, out, out / "model", overwrite=True)
    print(f"run: {out}\nexported model: {model_dir}")


if __name__ == "__main__":
    main()
