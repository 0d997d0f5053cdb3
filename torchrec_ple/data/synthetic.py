"""The built-in default data: the MMoE/PLE synthetic recipe, extended with sparse ids.

Two regression labels follow the MMoE paper (Ma et al. 2018), as used by PLE:

    u1, u2 orthonormal in R^d;  w1 = c u1;  w2 = c (p u1 + sqrt(1 - p^2) u2)
    y_t = w_t^T x + sum_i sin(alpha_i w_t^T x + beta_i) + eps_t,  x ~ N(0, I_d)

so ``p`` is the cosine between the tasks' weight vectors (their correlation). On top of
that, recommendation-style columns whose embeddings carry signal:

* ``user_id`` / ``item_id``: Zipf-distributed ids, each with a hidden bias;
* ``history``: a variable-length list of item ids whose mean hidden bias adds to clicks;
* ``click``: a binary label on every row, driven by ``y1`` and the id biases;
* ``buy``: a binary label defined only on clicked rows (null elsewhere), driven by ``y2``
  and the user's bias: a task whose sample space is a strict subset.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pyarrow as pa

from torchrec_ple.spec.schema import SyntheticSpec


def _zipf_ids(rng: np.random.Generator, n: int, cardinality: int, a: float = 1.1) -> np.ndarray:
    # Zipf over a finite support via inverse-CDF sampling: popular ids dominate, as in logs.
    ranks = np.arange(1, cardinality + 1, dtype=np.float64)
    p = ranks**-a
    cdf = np.cumsum(p / p.sum())
    ids = np.searchsorted(cdf, rng.random(n), side="right")
    return np.minimum(ids, cardinality - 1).astype(np.int64)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise (labels of the synthetic sources)."""
    return 1.0 / (1.0 + np.exp(-z))


def generate(spec: SyntheticSpec) -> Tuple[pa.Table, pa.Table]:
    """Generate (train, validation) tables from one seed.

    Args:
        spec (SyntheticSpec): generator parameters.

    Returns:
        Tuple[pa.Table, pa.Table]: ``train_rows`` and ``validation_rows`` rows with
        columns ``x0..x{dim-1}``, ``user_id``, ``item_id``, ``history``, ``y1``, ``y2``,
        ``click``, ``buy``.
    """
    rng = np.random.default_rng(spec.seed)
    n = spec.train_rows + spec.validation_rows
    d = spec.dim

    # The task geometry and the hidden id biases are fixed by the seed; rows follow.
    q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    p = spec.correlation
    w1 = u1
    w2 = p * u1 + np.sqrt(max(0.0, 1.0 - p * p)) * u2
    alpha = rng.standard_normal(spec.num_sines)
    beta = rng.standard_normal(spec.num_sines)
    user_bias = rng.standard_normal(spec.num_users)
    user_buy_bias = rng.standard_normal(spec.num_users)
    item_bias = rng.standard_normal(spec.num_items)

    x = rng.standard_normal((n, d)).astype(np.float32)
    noise_sd = np.sqrt(spec.noise)

    def label(w: np.ndarray) -> np.ndarray:
        z = x @ w
        return z + np.sin(np.outer(z, alpha) + beta).sum(axis=1) + noise_sd * rng.standard_normal(n)

    y1 = label(w1)
    y2 = label(w2)

    user = _zipf_ids(rng, n, spec.num_users)
    item = _zipf_ids(rng, n, spec.num_items)
    hist_len = rng.integers(0, spec.history_len + 1, size=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(hist_len, out=offsets[1:])
    hist_values = _zipf_ids(rng, int(offsets[-1]), spec.num_items)
    row_of_value = np.repeat(np.arange(n), hist_len)
    hist_sum = np.bincount(row_of_value, weights=item_bias[hist_values], minlength=n)
    hist_mean = hist_sum / np.maximum(hist_len, 1)

    def std(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / (v.std() + 1e-12)

    click_logit = (
        1.2 * std(y1) + 0.8 * user_bias[user] + 0.8 * item_bias[item] + 0.6 * hist_mean - 1.0
    )
    click = (rng.random(n) < sigmoid(click_logit)).astype(np.int64)
    buy_logit = 1.2 * std(y2) + 0.8 * user_buy_bias[user] + 0.4 * item_bias[item] - 0.5
    buy = (rng.random(n) < sigmoid(buy_logit)).astype(np.float64)
    buy_arr = pa.array(buy, mask=click == 0)  # undefined (null) off the sample space

    columns = {f"x{i}": pa.array(x[:, i]) for i in range(d)}
    columns.update(
        user_id=pa.array(user),
        item_id=pa.array(item),
        history=pa.ListArray.from_arrays(pa.array(offsets), pa.array(hist_values)),
        y1=pa.array(y1.astype(np.float32)),
        y2=pa.array(y2.astype(np.float32)),
        click=pa.array(click),
        buy=buy_arr,
    )
    table = pa.table(columns)
    return table.slice(0, spec.train_rows), table.slice(spec.train_rows, spec.validation_rows)
