"""Draw the dashboard without Grafana: every panel's queries over a time range from a Prometheus HTTP API, laid
out on Grafana's 24-column grid, into one PNG with matplotlib."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from tools.dashboard import Panel, Target, panels, substitute
from tools.prom import PrometheusApi

GRID_UNIT_IN = 0.4  # inches per Grafana grid row
DPI = 100
MAX_LEGEND = 14
WIDTH_IN = 24.0
UNIT_LABELS = {"reqps": "req/s", "s": "", "bytes": "", "percentunit": "", "short": "", "none": ""}
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def format_value(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "-"
    if value == 0:
        return {"percentunit": "0%", "s": "0 s", "bytes": "0 B", "reqps": "0 req/s"}.get(unit, "0")
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "s":
        for scale, suffix in ((1.0, " s"), (1e-3, " ms"), (1e-6, " µs")):
            if abs(value) >= scale or scale == 1e-6:
                return f"{value / scale:.3g}{suffix}"
    if unit == "bytes":
        for scale, suffix in ((2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.3g}{suffix}"
        return f"{value:.0f} B"
    suffix = " req/s" if unit == "reqps" else ""
    if value != 0 and (abs(value) >= 1e4 or abs(value) < 1e-2):
        return f"{value:.2e}{suffix}"
    return f"{value:.3g}{suffix}"


def time_locator(span_s: float, ticks: int) -> mdates.DateLocator:
    """Ticks at round times (every 10 s, 15 s, 30 s, 1, 2, 5, 10, 15, 30, 60 min), at most about `ticks` of them."""
    for every in (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span_s / every <= ticks:
            break
    if every < 60:
        return mdates.SecondLocator(bysecond=range(0, 60, every))
    return mdates.MinuteLocator(byminute=range(0, 60, every // 60)) if every < 3600 else mdates.HourLocator()


def legend_text(legend: str, labels: Mapping[str, str]) -> str:
    if not legend:
        return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), legend).strip()


def _dashed_refs(panel: Panel) -> set[str]:
    refs = set()
    for override in panel.raw.get("fieldConfig", {}).get("overrides", []):
        by_ref = override["matcher"]["id"] == "byFrameRefID"
        if by_ref and any(p["id"] == "custom.lineStyle" for p in override["properties"]):
            refs.add(override["matcher"]["options"])
    return refs


class Renderer:
    def __init__(self, api: PrometheusApi, values: Mapping[str, Sequence[str]], rate_interval: str,
                 start: float, end: float, step: float) -> None:  # fmt: skip
        self.api, self.values, self.rate_interval = api, values, rate_interval
        self.start, self.end, self.step = start, end, step
        self.time_format = "%H:%M:%S" if end - start <= 900 else "%H:%M"

    def series(self, target: Target) -> list[dict[str, Any]]:
        expr = substitute(target.expr, self.values, self.rate_interval)
        return self.api.query_range(expr, self.start, self.end, self.step)

    def draw(self, panel: Panel, ax: Axes) -> None:
        if panel.type == "stat":
            self._stat(panel, ax)
        elif panel.type == "heatmap":
            self._heatmap(panel, ax)
        else:
            self._timeseries(panel, ax)

    def _no_data(self, ax: Axes, why: str = "No data") -> None:
        ax.set_axis_off()
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#888888", fontsize=11)

    def _time_axis(self, ax: Axes, panel: Panel) -> None:
        ax.xaxis.set_major_locator(time_locator(self.end - self.start, max(3, panel.grid[2] // 2)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter(self.time_format))
        ax.tick_params(labelsize=8)

    def _timeseries(self, panel: Panel, ax: Axes) -> None:
        dashed = _dashed_refs(panel)
        lines = 0
        for target in panel.targets:
            for s in self.series(target):
                t = mdates.date2num([datetime.fromtimestamp(float(p[0])) for p in s["values"]])
                v = np.array([float(p[1]) for p in s["values"]])
                if not np.isfinite(v).any():
                    continue
                style: dict[str, Any] = {"linestyle": "--", "color": "black"} if target.ref in dashed else {}
                ax.plot(t, v, linewidth=1.2, label=legend_text(target.legend, s["metric"]), **style)
                lines += 1
        if lines == 0:
            self._no_data(ax, "No data (GPU only)" if panel.gpu_only else "No data")
            return
        unit = panel.unit
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
        self._time_axis(ax, panel)
        ax.grid(alpha=0.3)
        minimum = panel.raw.get("fieldConfig", {}).get("defaults", {}).get("min")
        if minimum is not None:
            ax.set_ylim(bottom=minimum)
        handles, labels = ax.get_legend_handles_labels()
        if len(handles) > MAX_LEGEND:
            handles, labels = (
                handles[: MAX_LEGEND - 1],
                [*labels[: MAX_LEGEND - 1], f"+{len(labels) - MAX_LEGEND + 1} more"],
            )
            handles.append(plt.Line2D([], [], linestyle="none"))
        ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  handlelength=1.5, borderaxespad=0.0)  # fmt: skip

    def _stat(self, panel: Panel, ax: Axes) -> None:
        ax.set_axis_off()
        mappings = {}
        for m in panel.raw.get("fieldConfig", {}).get("defaults", {}).get("mappings", []):
            if m.get("type") == "value":
                mappings.update({float(k): v["text"] for k, v in m["options"].items()})
        entries = []
        for target in panel.targets:
            for s in self.series(target):
                finite = [float(p[1]) for p in s["values"] if math.isfinite(float(p[1]))]
                if finite:
                    value = finite[-1]
                    text = mappings.get(value, format_value(value, panel.unit))
                    entries.append((legend_text(target.legend, s["metric"]), text))
        if not entries:
            self._no_data(ax)
            return
        if len(entries) == 1:
            ax.text(0.5, 0.4, entries[0][1], ha="center", va="center", fontsize=20, transform=ax.transAxes,
                    color="#1f6f3f")  # fmt: skip
            return
        for i, (name, text) in enumerate(entries):
            x = (i + 0.5) / len(entries)
            ax.text(x, 0.5, text, ha="center", va="center", fontsize=16, transform=ax.transAxes, color="#1f6f3f")
            ax.text(x, 0.1, name, ha="center", va="center", fontsize=8, transform=ax.transAxes)

    def _heatmap(self, panel: Panel, ax: Axes) -> None:
        series = [s for t in panel.targets for s in self.series(t)]
        if not series:
            self._no_data(ax)
            return
        times = sorted({float(p[0]) for s in series for p in s["values"]})
        index = {t: i for i, t in enumerate(times)}
        bounds = sorted({float(s["metric"]["le"]) for s in series})
        cumulative = np.zeros((len(bounds), len(times)))
        for s in series:
            row = bounds.index(float(s["metric"]["le"]))
            for t, v in s["values"]:
                cumulative[row, index[float(t)]] += float(v) if math.isfinite(float(v)) else 0.0
        counts = np.diff(cumulative, axis=0, prepend=0.0).clip(min=0)
        if counts.sum() == 0:
            self._no_data(ax)
            return
        # keep the buckets that ever held something, and one either side
        used = np.flatnonzero(counts.sum(axis=1) > 0)
        lo, hi = max(used.min() - 1, 0), min(used.max() + 1, len(bounds) - 1)
        counts = counts[lo : hi + 1]
        labels = [format_value(b, "short") if math.isfinite(b) else "+Inf" for b in bounds[lo : hi + 1]]
        edges = [times[0] - self.step / 2] + [t + self.step / 2 for t in times]
        x = mdates.date2num([datetime.fromtimestamp(t) for t in edges])
        mesh = ax.pcolormesh(x, np.arange(len(labels) + 1), counts, cmap="Oranges")
        ax.set_yticks(np.arange(len(labels)) + 0.5, [f"≤ {label}" for label in labels], fontsize=6)
        ax.xaxis_date()
        self._time_axis(ax, panel)
        colorbar = plt.colorbar(mesh, cax=ax.inset_axes((1.01, 0.0, 0.02, 1.0)))
        colorbar.set_label("images/s", fontsize=7)
        colorbar.ax.tick_params(labelsize=6)


def render(
    dashboard: Mapping[str, Any],
    api: PrometheusApi,
    values: Mapping[str, Sequence[str]],
    out: Path,
    minutes: float,
    rate_interval: str = "1m",
    step: float | None = None,
    subtitle: str = "",
) -> Path:
    """Every panel over the last `minutes`, laid out as in Grafana (24 columns; one grid row = GRID_UNIT_IN)."""
    end = time.time()
    start = end - minutes * 60
    step = step or max(1.0, minutes * 60 / 240)
    renderer = Renderer(api, values, rate_interval, start, end, step)
    header = 1.5  # grid rows above the dashboard for its title
    height_units = header + max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    width_in, height_in = WIDTH_IN, height_units * GRID_UNIT_IN
    fig = plt.figure(figsize=(width_in, height_in))

    def fraction(x_in: float, top_in: float, w_in: float, h_in: float) -> tuple[float, float, float, float]:
        return (x_in / width_in, 1 - (top_in + h_in) / height_in, w_in / width_in, h_in / height_in)

    title = f"{dashboard['title']}: last {minutes:g} min" + (f" ({subtitle})" if subtitle else "")
    fig.text(0.008, 1 - 0.7 * GRID_UNIT_IN / height_in, title, fontsize=18, fontweight="bold", va="center")
    for row in (p for p in dashboard["panels"] if p["type"] == "row"):
        top = (row["gridPos"]["y"] + header + 0.5) * GRID_UNIT_IN
        fig.text(0.008, 1 - top / height_in, row["title"], fontsize=14, fontweight="bold", color="#35507a",
                 va="center")  # fmt: skip
    for panel in panels(dashboard):
        x, y, w, h = panel.grid
        x_in, top_in = x / 24 * width_in, (y + header) * GRID_UNIT_IN
        w_in, h_in = w / 24 * width_in, h * GRID_UNIT_IN
        frame = fig.add_axes(fraction(x_in + 0.05, top_in + 0.05, w_in - 0.1, h_in - 0.1))
        frame.set_xticks([])
        frame.set_yticks([])
        for spine in frame.spines.values():
            spine.set_color("#d0d0d0")
        frame.set_title(panel.title, fontsize=10, loc="left", fontweight="bold", y=1.0, pad=-13, x=0.01)
        legend_in = 0.0 if panel.type != "timeseries" else min(3.2, 0.34 * w_in)
        colorbar_in = 0.9 if panel.type == "heatmap" else 0.0
        left_pad, top_pad, bottom_pad = (0.2, 0.35, 0.1) if panel.type == "stat" else (0.85, 0.4, 0.4)
        ax = fig.add_axes(
            fraction(
                x_in + left_pad,
                top_in + top_pad,
                w_in - left_pad - 0.15 - legend_in - colorbar_in,
                h_in - top_pad - bottom_pad,
            )
        )
        renderer.draw(panel, ax)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white")
    plt.close(fig)
    return out
