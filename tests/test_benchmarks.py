"""The benchmark suite end to end in --quick mode: real server processes, a real load-generator process, real
gRPC. It checks that the run is complete and honest (every expected row, no errors, the transport server sends
replies of the service's size, a real PNG, BENCHMARKS.md's section rendered), never how fast anything is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from benchmarks import report, targets

REPO = Path(__file__).resolve().parents[1]
METHODS = ("Sample", "Decode", "Encode")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, json.loads((out / "bench.json").read_text()), done.stdout


def _load(document: dict[str, Any], **match: Any) -> dict[str, Any]:
    row = targets.find(document["rows"], kind="load", **match)
    assert row is not None, f"no row {match}"
    return row


def test_every_expected_row_is_there_without_errors(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    _, document, _ = quick_run
    rows = document["rows"]
    raw = {(r["network"], r["batch"]) for r in rows if r["kind"] == "raw" and r["images_per_s"] > 0}
    assert raw == {("encoder", 1), ("encoder", 64), ("decoder", 1), ("decoder", 64)}
    for method in METHODS:
        for server in ("transport", "service", "service-nobatch"):
            row = _load(document, server=server, method=method, n=1, inflight=8, workers=1)
            assert row["ok"] > 0 and row["errors"] == 0 and row["rate"] > 0, row
            assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"], row
    assert not [r for r in rows if targets.failed(r)]
    assert {t["status"] for t in document["targets"]} <= {"PASS", "FAIL"}  # ERROR would mean a missing figure


def test_bulk_rows_carry_every_image(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    _, document, _ = quick_run
    sample = _load(document, server="service", method="Sample", n=1024)
    assert sample["ok"] >= 1 and sample["errors"] == 0
    assert min(sample["reply_bytes"]) > 1024 * 28 * 28 * 4  # 1024 float32 images and their latents
    stream = _load(document, server="service", method="SampleStream", n=1024)
    assert (stream["ok"], stream["errors"], stream["messages"]) == (1, 0, 1024 // 256)  # the default chunk


def test_transport_replies_are_the_size_of_the_service_replies(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    _, document, _ = quick_run
    for method in METHODS:
        service = _load(document, server="service", method=method, n=1)["reply_bytes"]
        transport = _load(document, server="transport", method=method, n=1)["reply_bytes"]
        assert len(service) == 1 and service == transport, (method, service, transport)


def test_outputs_table_plot_and_markdown(quick_run: tuple[Path, dict[str, Any], str], tmp_path: Path) -> None:
    out, document, stdout = quick_run
    assert "== Targets" in stdout and "== Under load" in stdout
    with Image.open(out / "bench.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 100
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"# Hand-written\n\n{report.BEGIN}\nold\n{report.END}\nkept\n")
    report.main([str(out / "bench.json"), "--markdown", str(markdown), "--png", str(tmp_path / "b.png")])
    text = markdown.read_text()
    assert text.startswith("# Hand-written") and text.endswith("kept\n") and "old" not in text
    assert document["meta"]["cpu"] in text and "| service |" in text and "b.png" in text


def test_a_ratio_on_a_row_without_replies_is_an_error_not_a_result() -> None:
    empty = {"kind": "load", "ok": 0, "errors": 0, "rate": 0.0}
    good = {"kind": "load", "ok": 10, "errors": 0, "rate": 5.0}
    assert targets._status(0.0, lambda v: v >= 0.8, empty, good) == "ERROR"
    assert targets._status(0.9, lambda v: v >= 0.8, good, good) == "PASS"
