"""The ``tune:`` block of a spec: the search space of ``torchrec-ple tune``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class TuneParamSpec:
    """The values ``torchrec-ple tune`` searches for one key path of the spec.

    Either ``choices`` (any YAML values, lists included, e.g. ``[[64, 32], [128, 64]]``)
    or a range ``low``..``high``: integers when ``low``, ``high`` (and ``step``) are ints,
    else numbers; ``log`` samples the range log-uniformly.

    Example (YAML)::

        - {key: train.dense_optimizer.lr, low: 1.0e-4, high: 1.0e-2, log: true}
        - {key: model.expert_dims[0], low: 32, high: 128, step: 32}
        - {key: model.expert_dims, choices: [[64, 32], [128, 64]]}

    Args:
        key (str): the key path, as ``--set`` takes it (``tasks[1].weight.decay``).
        low (Optional[Any]): the least value of a range.
        high (Optional[Any]): the greatest value of a range.
        log (bool): sample ``log(value)`` uniformly (``low > 0``). Default: False.
        step (Optional[Any]): spacing of a range's values. Default: none (continuous;
            1 for an int range).
        choices (Optional[List[Any]]): the values to choose from.
    """

    key: str
    low: Optional[Any] = None
    high: Optional[Any] = None
    log: bool = False
    step: Optional[Any] = None
    choices: Optional[List[Any]] = None


@dataclass
class TunePruneSpec:
    """When ``tune`` stops a poor trial early (multi-objective: Optuna's pruners do not apply).

    After each epoch from ``warmup_epochs`` on, a trial stops when its best epoch so far
    (by ``train.select``) is worse on every objective than the median of the completed
    trials of its architecture at the same epoch, once ``min_trials`` of them exist.

    Args:
        warmup_epochs (int): epochs every trial trains before it may be stopped. Default: 1.
        min_trials (int): completed trials of the architecture needed first. Default: 4.
    """

    warmup_epochs: int = 1
    min_trials: int = 4


@dataclass
class TuneSpec:
    """The search of ``torchrec-ple tune`` (ignored by ``fit``).

    Args:
        params (List[TuneParamSpec]): the searched key paths and their values.
        objectives (Dict[str, str]): task -> validation metric to optimise (``auc``/``ne``
            of a binary task, ``mse`` of a regression task). Default: every task, AUC for
            binary and MSE for regression.
        architectures (List[str]): one study each. Default: ``model.architecture``.
        trials (int): trials per architecture. Default: 20.
        startup_trials (int): random trials before the TPE sampler models. Default: 5.
        seed (int): the sampler's seed. Default: 0.
        prune (Optional[TunePruneSpec]): early stop of poor trials; ``null``: none.
    """

    params: List[TuneParamSpec] = field(default_factory=list)
    objectives: Dict[str, str] = field(default_factory=dict)
    architectures: List[str] = field(default_factory=list)
    trials: int = 20
    startup_trials: int = 5
    seed: int = 0
    prune: Optional[TunePruneSpec] = field(default_factory=TunePruneSpec)
