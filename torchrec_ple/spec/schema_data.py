"""The ``data:`` section of a spec: where the rows come from (files, synthetic, Feast)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


@dataclass
class FileSpec:
    """One table of raw rows on disk.

    Args:
        path (Path): Parquet or CSV file or a directory of them; a relative path in
            YAML is resolved against the spec file's folder.
        format (Optional[str]): ``parquet`` or ``csv``; inferred from the suffix when
            omitted.
        names (Optional[List[str]]): CSV column names for files without a header row.
        separator (str): CSV field separator. Default: ``,``.
        na_values (List[str]): CSV strings read as missing. Default: ``[]``.
        comment (Optional[str]): CSV lines starting with this character are skipped.
        skip_rows (int): CSV lines to skip at the top. Default: 0.
    """

    path: Path
    format: Optional[str] = None
    names: Optional[List[str]] = None
    separator: str = ","
    na_values: List[str] = field(default_factory=list)
    comment: Optional[str] = None
    skip_rows: int = 0


@dataclass
class SyntheticSpec:
    """Parameters of the built-in generator (MMoE/PLE paper recipe plus sparse ids).

    Args:
        train_rows (int): rows of training data. Default: 50_000.
        validation_rows (int): rows of validation data. Default: 10_000.
        correlation (float): cosine between the two tasks' weight vectors, in [-1, 1].
            Default: 0.5.
        dim (int): dimension of the Gaussian input x. Default: 32.
        num_sines (int): number of sine terms ``m``. Default: 10.
        noise (float): variance of the label noise. Default: 0.01.
        num_users (int): cardinality of the ``user_id`` column. Default: 2000.
        num_items (int): cardinality of the ``item_id`` column. Default: 5000.
        history_len (int): maximum length of the ``history`` list column. Default: 10.
        seed (int): generator seed. Default: 0.
    """

    train_rows: int = 50_000
    validation_rows: int = 10_000
    correlation: float = 0.5
    dim: int = 32
    num_sines: int = 10
    noise: float = 0.01
    num_users: int = 2000
    num_items: int = 5000
    history_len: int = 10
    seed: int = 0


@dataclass
class FeastSpec:
    """Training rows retrieved point-in-time correct from a Feast feature repo.

    Needs the ``feast`` extra (``pip install -r requirements/feast.txt``). Features of the
    spec name the retrieved columns (``feature`` or ``view__feature`` with
    ``full_feature_names``); Feast field tags ``embedding_dim``, ``pooling`` and
    ``num_embeddings`` fill the embedding settings the YAML leaves out.

    Args:
        repo_path (Path): folder with ``feature_store.yaml``; relative to the spec file.
        entity_df (Path): Parquet/CSV with entity keys, event timestamps and labels.
        feature_service (Optional[str]): a feature service name; or give ``features``.
        features (Optional[List[str]]): ``view:feature`` references.
        validation_entity_df (Optional[Path]): separate validation entity rows; else
            ``data.validation_fraction`` of the entity rows is held out.
        split (str): ``random`` or ``time`` (the latest rows) hold-out. Default: random.
        timestamp_column (str): event timestamp column. Default: ``event_timestamp``.
        full_feature_names (bool): retrieve columns as ``view__feature``. Default: False.
        fill (Dict[str, Any]): values for nulls per retrieved column (e.g. a reserved id
            for identity-mapped ids a point-in-time join could not find). Default: none.
    """

    repo_path: Path
    entity_df: Path
    feature_service: Optional[str] = None
    features: Optional[List[str]] = None
    validation_entity_df: Optional[Path] = None
    split: str = "random"
    timestamp_column: str = "event_timestamp"
    full_feature_names: bool = False
    fill: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    """Where the rows come from.

    Args:
        source (str): ``files`` or ``synthetic``. Default: ``files``.
        train (Optional[FileSpec]): training rows (``files`` source).
        validation (Optional[FileSpec]): validation rows; when omitted, a
            ``validation_fraction`` of the training rows is held out.
        validation_fraction (float): held-out fraction when no validation file is
            given. Default: 0.1.
        synthetic (SyntheticSpec): generator parameters (``synthetic`` source).
        feast (Optional[FeastSpec]): the feature repo and entity rows (``feast`` source).
        streaming (bool): read the ``files`` chunk by chunk instead of loading them:
            transforms fitted in one streaming pass, rows split over ranks and workers by
            Parquet row group (CSV: by file), shuffled in a bounded buffer. Needs a
            ``validation`` file when validation is wanted (no held-out fraction).
            Default: False.
        shuffle_buffer (int): rows mixed by the streaming shuffle buffer, per worker.
            Default: 100_000.
        num_workers (int): DataLoader worker processes reading streaming data, per rank;
            0 reads in the training process. Default: 0.
        max_dropped_fraction (float): the ``drop`` policies may drop at most this
            fraction of a table's rows (of a chunk when streaming); more is a DataError
            (a broken join or a wrong column, not a few bad rows). Default: 0.1.
        options (Dict[str, Any]): settings of a source registered outside the package
            (``torchrec_ple.registry.READERS``), read and checked by its reader.
            Default: none.
    """

    source: str = "files"
    train: Optional[FileSpec] = None
    validation: Optional[FileSpec] = None
    validation_fraction: float = 0.1
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    feast: Optional[FeastSpec] = None
    streaming: bool = False
    shuffle_buffer: int = 100_000
    num_workers: int = 0
    max_dropped_fraction: float = 0.1
    options: Dict[str, Any] = field(default_factory=dict)
