"""Encoding reports: counts of what encoding changed or dropped, merged and described."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from torchrec_ple.spec.errors import DataError


def check_dropped(
    report: Dict[str, Any], limit: float, rows: int, file: Optional[str] = None
) -> None:
    """Raise :class:`DataError` when a report drops more than ``limit`` of ``rows``.

    Args:
        report (Dict[str, Any]): an encoding report, or several merged
            (:func:`merge_reports`): ``dropped_rows``, ``dropped`` per reason and
            ``rows`` (the rows it counted so far).
        limit (float): ``data.max_dropped_fraction``.
        rows (int): the rows the limit is a fraction of (the whole data, which may be
            more than the report has counted yet: drops only grow, so a report already
            over the limit of the whole is final).
        file (Optional[str]): the data, for the message.
    """
    n_bad = int(report.get("dropped_rows", 0))
    if n_bad <= limit * rows:
        return
    why = ", ".join(f"{r}: {c}" for r, c in report.get("dropped", {}).items() if c)
    read = int(report.get("rows", rows))
    so_far = f" in the first {read} read" if read < rows else ""
    raise DataError(
        file=file,
        expected=f"at most data.max_dropped_fraction={limit:g} of the rows dropped",
        found=f"{n_bad} of {rows} rows{so_far} ({why})",
        hint="a wrong column or a broken join? raise the limit if this is expected",
    )


def merge_reports(total: Dict[str, Any], part: Dict[str, Any]) -> Dict[str, Any]:
    """Sum two encoding reports (nested dicts of counts) into a new one."""
    out = dict(total)
    for k, v in part.items():
        if isinstance(v, dict):
            out[k] = merge_reports(out.get(k) or {}, v)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out[k] = out.get(k, 0) + int(v)
        else:
            out[k] = v
    return out


def describe_report(report: Dict[str, Any]) -> List[str]:
    """What encoding changed or dropped, one short phrase per feature/task with counts."""
    out: List[str] = []
    if report.get("dropped_rows"):
        why = ", ".join(f"{r} {c}" for r, c in report.get("dropped", {}).items() if c)
        out.append(f"{report['dropped_rows']} rows dropped ({why})")
    names = {
        "missing_or_nonfinite_filled": "filled",
        "clipped": "clipped",
        "missing": "missing",
        "out_of_vocabulary": "out of vocabulary",
        "out_of_range": "out of range",
        "empty_lists": "empty lists",
        "label_missing": "labels missing",
        "label_invalid_dropped": "invalid labels dropped",
    }
    for group in ("features", "tasks"):
        for name, rep in report.get(group, {}).items():
            parts = [f"{rep[k]} {label}" for k, label in names.items() if rep.get(k)]
            if group == "tasks" and rep.get("in_sample_space") == 0 and report.get("rows"):
                parts.append("no row left in its sample space: its metrics are undefined")
            if parts:
                out.append(f"{name}: {', '.join(parts)}")
    return out
