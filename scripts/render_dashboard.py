"""Render the Grafana dashboard's panels from a running Prometheus into one PNG (no Grafana needed).

python scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 5 --png docs/images/dashboard.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import dashboard  # noqa: E402
from tools.prom import PrometheusApi  # noqa: E402
from tools.render import render  # noqa: E402


def variable_values(board: dict, api: PrometheusApi) -> dict[str, list[str]]:
    """Every template variable at "All": the values Prometheus knows for it now."""
    return {name: api.label_values(label, metric) for name, (metric, label) in dashboard.variables(board).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--minutes", type=float, default=5.0, help="time range: the last M minutes")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "images" / "dashboard.png")
    parser.add_argument("--dashboard", type=Path, default=dashboard.DASHBOARD)
    parser.add_argument("--rate-interval", default="30s", help="what $__rate_interval becomes")
    parser.add_argument("--subtitle", default="")
    args = parser.parse_args(argv)
    board = dashboard.load(args.dashboard)
    api = PrometheusApi(args.prometheus.rstrip("/"))
    out = render(board, api, variable_values(board, api), args.png, args.minutes, args.rate_interval,
                 subtitle=args.subtitle)  # fmt: skip
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
