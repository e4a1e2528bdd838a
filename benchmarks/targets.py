"""Ratios and the issue's targets, computed from a run's rows (pure functions: no processes, no I/O).

Each figure is divided by its limit measured in the same run: the service by the bare transport at the same
in-flight count, batching on by batching off, bulk generation by the raw decoder at the service's batch size,
the service over Triton by Triton called directly. A ratio built on a row with errors is reported as ERROR,
never as a PASS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
LIMIT_OF = {"service": "transport", "service-nobatch": "transport", "service-triton": "triton-direct"}
TARGET_INFLIGHT = 64  # the "64 in flight"


def find(rows: list[Row], **match: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def raw_rate(rows: list[Row], network: str, batch: int) -> Row | None:
    return find(rows, kind="raw", network=network, batch=batch)


def limit_row(rows: list[Row], row: Row, max_batch_size: int) -> Row | None:
    """The row this one is divided by: same method, workers and in-flight count on the limit server; for bulk
    rows (n > 1), the raw decoder at the batch size the service splits them into."""
    if row["n"] > 1:
        return raw_rate(rows, "decoder", max_batch_size)
    limit = LIMIT_OF.get(row["server"])
    if limit is None:
        return None
    return find(
        rows, kind="load", server=limit, workers=row["workers"], method=row["method"], n=1, inflight=row["inflight"]
    )


def annotate(rows: list[Row], max_batch_size: int) -> None:
    """Add `vs` (the limit's label) and `ratio` (this rate / the limit's rate) to every load row that has one."""
    for row in rows:
        if row.get("kind") != "load":
            continue
        limit = limit_row(rows, row, max_batch_size)
        if limit is None:
            continue
        if limit["kind"] == "raw":
            row["vs"], value, base = f"raw decoder b{limit['batch']}", row["images_per_s"], limit["images_per_s"]
        else:
            row["vs"], value, base = limit["server"], row["rate"], limit["rate"]
        row["ratio"] = value / base if base else None


def failed(row: Row) -> bool:
    """An error row, or a load row with an error reply or no reply at all."""
    return row.get("kind") == "error" or (row.get("kind") == "load" and (row["errors"] > 0 or row["ok"] == 0))


def _status(value: float | None, passes: Callable[[float], bool], *sources: Row | None) -> str:
    if value is None or any(s is None or failed(s) for s in sources):
        return "ERROR"
    return "PASS" if passes(value) else "FAIL"


def target(
    workers: int, name: str, value: float | None, goal: str, passes: Callable[[float], bool], *sources: Row | None
) -> Row:
    return {
        "kind": "target",
        "workers": workers,
        "name": name,
        "value": value,
        "goal": goal,
        "status": _status(value, passes, *sources),
    }


def _ratio(a: Row | None, b: Row | None, key: str = "rate") -> float | None:
    if a is None or b is None or not b.get(key):
        return None
    return float(a[key]) / float(b[key])


def per_method(rows: list[Row], workers: int, method: str, high: int, low: int) -> list[Row]:
    """Share of the transport at `high` in flight, p50 overhead at `low`, batching gain, service over Triton."""
    one = {"kind": "load", "workers": workers, "method": method, "n": 1}
    svc, tr = find(rows, server="service", inflight=high, **one), find(rows, server="transport", inflight=high, **one)
    svc1, tr1 = find(rows, server="service", inflight=low, **one), find(rows, server="transport", inflight=low, **one)
    off = find(rows, server="service-nobatch", inflight=high, **one)
    via = find(rows, server="service-triton", inflight=high, **one)
    direct = find(rows, server="triton-direct", inflight=high, **one)
    found = [
        target(
            workers,
            f"{method} n=1 @{high}: service / transport req/s",
            _ratio(svc, tr),
            ">= 0.8",
            lambda v: v >= 0.8,
            svc,
            tr,
        ),
        target(
            workers,
            f"{method} n=1 @{low}: p50 service - transport (ms)",
            _p50_gap(svc1, tr1),
            "<= 0.3",
            lambda v: v <= 0.3,
            svc1,
            tr1,
        ),
        target(
            workers,
            f"{method} n=1 @{high}: batching on / off req/s",
            _ratio(svc, off),
            ">= 4",
            lambda v: v >= 4.0,
            svc,
            off,
        ),
    ]
    if via is not None or direct is not None:
        found.append(
            target(
                workers,
                f"{method} n=1 @{high}: service over Triton / Triton direct",
                _ratio(via, direct),
                ">= 0.8",
                lambda v: v >= 0.8,
                via,
                direct,
            )
        )
    return found


def _p50_gap(svc: Row | None, tr: Row | None) -> float | None:
    if svc is None or tr is None or svc.get("p50_ms") is None or tr.get("p50_ms") is None:
        return None
    return float(svc["p50_ms"]) - float(tr["p50_ms"])


def bulk_and_memory(rows: list[Row], workers: int, max_batch_size: int) -> list[Row]:
    raw = raw_rate(rows, "decoder", max_batch_size)
    found = []
    for method in ("Sample", "SampleStream"):
        bulk = next(
            (
                r
                for r in rows
                if r.get("kind") == "load"
                and r["server"] == "service"
                and r["workers"] == workers
                and r["method"] == method
                and r["n"] > 1
            ),
            None,
        )
        if bulk is not None:
            name = f"{method} n={bulk['n']}: images/s / raw decoder b{max_batch_size}"
            found.append(
                target(
                    workers,
                    name,
                    _ratio(bulk, raw, "images_per_s") if raw else None,
                    ">= 0.85",
                    lambda v: v >= 0.85,
                    bulk,
                    raw,
                )
            )
    for kind in ("memory", "soak"):
        mem = find(rows, kind=kind, workers=workers)
        if mem is not None:
            name = "RSS end / after warm-up" + (f" ({mem['seconds']:.0f} s soak)" if kind == "soak" else " (this run)")
            found.append(target(workers, name, mem.get("ratio"), "<= 1.10", lambda v: v <= 1.10, mem))
    return found


def targets(rows: list[Row], methods: list[str], inflights: list[int], max_batch_size: int) -> list[Row]:
    """Every target for every workers count in the rows; at 64 in flight, or the nearest count the run has."""
    high = TARGET_INFLIGHT if TARGET_INFLIGHT in inflights else max(inflights)
    low = min(inflights)
    found: list[Row] = []
    for workers in sorted({r["workers"] for r in rows if "workers" in r}):
        for method in methods:
            found += per_method(rows, workers, method, high, low)
        found += bulk_and_memory(rows, workers, max_batch_size)
    return found
