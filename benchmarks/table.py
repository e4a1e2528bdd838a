"""The results as tables of cells: one definition, rendered as text (the terminal) and as Markdown
(BENCHMARKS.md), so the two never disagree."""

from __future__ import annotations

from typing import Any

from benchmarks.targets import failed

Row = dict[str, Any]
Table = tuple[str, list[str], list[list[str]]]  # title, header, cells


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def raw_table(rows: list[Row]) -> Table:
    raw = [r for r in rows if r.get("kind") == "raw"]
    if not raw:
        return "Raw TorchScript", [], []
    batches = sorted({r["batch"] for r in raw})
    threads = raw[0]["threads"] if raw else "?"
    cells = []
    for network in ("encoder", "decoder"):
        rates = {r["batch"]: r["images_per_s"] for r in raw if r["network"] == network}
        cells.append([network, *(_num(rates.get(b)) for b in batches)])
    title = f"Raw TorchScript, in-process, images/s by batch size (torch threads {threads})"
    return title, ["network", *map(str, batches)], cells


LOAD_HEADER = [
    "workers",
    "server",
    "method",
    "n",
    "in flight",
    "req/s",
    "images/s",
    "p50 ms",
    "p99 ms",
    "OK",
    "errors",
    "reply B",
    "vs",
    "ratio",
]


def _load_cells(r: Row) -> list[str]:
    sizes = r.get("reply_bytes") or []
    size = "-" if not sizes else "/".join(map(str, sizes))
    errors = str(r["errors"]) + (f" {','.join(r.get('error_codes', {}))}" if r["errors"] else "")
    return [
        str(r["workers"]),
        r["server"],
        r["method"],
        str(r["n"]),
        str(r["inflight"]),
        _num(r["rate"]),
        _num(r["images_per_s"]),
        _num(r.get("p50_ms"), 2),
        _num(r.get("p99_ms"), 2),
        str(r["ok"]),
        errors,
        size,
        r.get("vs", ""),
        _num(r.get("ratio"), 2),
    ]


def load_table(rows: list[Row]) -> Table:
    load = [r for r in rows if r.get("kind") == "load"]
    return "Under load (one load-generator process, pre-serialized requests)", LOAD_HEADER, list(map(_load_cells, load))


def targets_table(targets: list[Row]) -> Table:
    cells = [[str(t["workers"]), t["name"], _num(t["value"], 2), t["goal"], t["status"]] for t in targets]
    return "Targets (issue 8)", ["workers", "figure", "measured", "goal", "status"], cells


def memory_table(rows: list[Row]) -> Table:
    mem = [r for r in rows if r.get("kind") in ("memory", "soak")]
    cells = [
        [
            str(r["workers"]),
            r["kind"] + (f" {r['seconds']:.0f} s" if r["kind"] == "soak" else ""),
            _num(r["rss_warm_kb"] / 1024, 1),
            _num(r["rss_end_kb"] / 1024, 1),
            _num(r["hwm_kb"] / 1024, 1),
            _num(r["ratio"], 3),
        ]
        for r in mem
    ]
    header = ["workers", "run", "RSS after warm-up MB", "RSS at end MB", "peak (VmHWM) MB", "end / warm-up"]
    return "Service memory (its process tree, /proc/<pid>/status)", header, cells


def problems_table(rows: list[Row]) -> Table:
    cells = [
        [str(r.get("workers", "")), r.get("server", ""), r.get("method", ""), r["message"]]
        for r in rows
        if r.get("kind") == "error"
    ]
    cells += [
        [str(r["workers"]), r["server"], f"{r['method']} @{r['inflight']}", r.get("first_error") or "no reply"]
        for r in rows
        if r.get("kind") == "load" and failed(r)
    ]
    return "Errors", ["workers", "server", "what", "message"], cells


def all_tables(rows: list[Row], targets: list[Row]) -> list[Table]:
    tables = [raw_table(rows), load_table(rows), targets_table(targets), memory_table(rows)]
    problems = problems_table(rows)
    return [t for t in tables if t[2]] + ([problems] if problems[2] else [])


def _numeric(cell: str) -> bool:
    return cell == "-" or cell.replace(",", "").replace(".", "").lstrip("-").isdigit()


def as_text(table: Table) -> str:
    """Fixed-width columns; numbers right-aligned, words left-aligned."""
    title, header, cells = table
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    right = [all(_numeric(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right, strict=True)).rstrip()
        for line in [header, *cells]
    ]
    return "\n".join([f"== {title}", *lines])


def as_markdown(table: Table) -> str:
    title, header, cells = table
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    lines += [f"| {' | '.join(c.replace('|', '/') for c in line)} |" for line in cells]
    return "\n".join([f"### {title}", "", *lines])
