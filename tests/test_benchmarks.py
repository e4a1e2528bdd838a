"""The benchmark suite end to end in --quick mode: real server processes, a real load-generator process, real
gRPC. It checks that the run is complete and honest (every expected row, no errors, the transport server sends
replies of the service's size, a real PNG, BENCHMARKS.md's section rendered), never how fast anything is."""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from benchmarks import loadgen, report, targets
from benchmarks.payloads import SERVICE, Payload
from benchmarks.procs import Server, stop
from benchmarks.rows import Load, loadgen_argv
from benchmarks.servers import start_transport
from service.config import Settings

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


# --- the multi-process load generator (--procs) ------------------------------------------------------------

REPLY = b"r" * 100


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """The transport server on loopback answering Sample with fixed bytes, and a request file to send it."""
    folder = tmp_path_factory.mktemp("loadgen")
    (folder / "reply.bin").write_bytes(REPLY)
    (folder / "request.bin").write_bytes(b"q" * 10)
    server = start_transport({SERVICE + "Sample": folder / "reply.bin"}, 1, folder / "logs")
    try:
        yield server, folder / "request.bin"
    finally:
        stop(server)


def _loadgen(bare_server: tuple[Server, Path], *options: str) -> dict[str, Any]:
    server, request = bare_server
    argv = [sys.executable, "-m", "benchmarks.loadgen", "--target", server.target]
    done = subprocess.run([*argv, "--call", SERVICE + "Sample", str(request), *options], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def test_procs_split_tasks_and_connections_over_one_window(bare_server: tuple[Server, Path]) -> None:
    out = _loadgen(bare_server, "--inflight", "5", "--channels", "3", "--procs", "2", "--seconds", "0.5",
                   "--warmup", "0.2")  # fmt: skip
    assert out["procs"] == 2 and out["errors"] == 0 and out["ok"] > 0, out
    children = out["children"]
    assert [(c["inflight"], c["channels"]) for c in children] == [(3, 2), (2, 1)]
    assert all(c["ok"] > 0 for c in children) and sum(c["ok"] for c in children) == out["ok"]
    # one common window: it ends with the last call started before its end, not at the sum of the children's
    assert 0.5 <= out["elapsed_s"] < 1.5 and out["rate"] == pytest.approx(out["ok"] / out["elapsed_s"], rel=1e-3)
    assert out["reply_bytes"] == [len(REPLY)] and out["inflight"] == 5 and out["channels"] == 3
    assert 0 < out["p50_ms"] <= out["p99_ms"]


def test_procs_split_calls_exactly(bare_server: tuple[Server, Path]) -> None:
    out = _loadgen(bare_server, "--inflight", "4", "--procs", "2", "--calls", "7")
    assert (out["ok"], out["errors"], out["procs"]) == (7, 0, 2), out
    assert [(c["calls"], c["ok"]) for c in out["children"]] == [(4, 4), (3, 3)]
    assert out["channels"] == 2  # --channels 1 asked, but each process needs a connection of its own


def test_more_procs_than_inflight_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        loadgen.parse_args(["--target", "x:1", "--call", "/a/b", "f", "--inflight", "2", "--procs", "3"])
    assert exit_.value.code == 2 and "--procs 3 > --inflight 2" in capsys.readouterr().err


def test_percentiles_come_from_the_merged_samples_not_averaged() -> None:
    """Three calls of 1 ms in one child and one of 9 ms in the other: the median call took 1 ms (averaging the
    children's medians would say 5 ms); counts are summed, the window is the longer child's."""
    args = argparse.Namespace(inflight=4, channels=1, calls=None, procs=2, seconds=1.0, warmup=0.0)
    parts = loadgen.child_args(args)
    counts = {"errors": {}, "first_error": "", "sizes": [100], "messages": 0, "elapsed": 1.0}
    slow = {"errors": {"UNAVAILABLE": 2}, "first_error": "UNAVAILABLE: x", "sizes": [120], "messages": 3,
            "elapsed": 1.25}  # fmt: skip
    latencies = [np.full(3, 0.001), np.full(1, 0.009)]
    out = loadgen.merge(args, parts, [(latencies[0], counts), (latencies[1], slow)])
    merged_ms = np.concatenate(latencies) * 1000
    assert out["p50_ms"] == pytest.approx(1.0) and merged_ms.min() <= out["p99_ms"] <= merged_ms.max()
    assert (out["ok"], out["errors"], out["error_codes"]) == (4, 2, {"UNAVAILABLE": 2})
    assert out["first_error"] == "UNAVAILABLE: x"  # the first non-empty one
    assert (out["reply_bytes"], out["messages"], out["elapsed_s"], out["rate"]) == ([100, 120], 3, 1.25, 4 / 1.25)
    assert [c["ok"] for c in out["children"]] == [3, 1] and out["channels"] == 2


def test_suite_rows_ask_for_at_most_one_process_per_request(tmp_path: Path) -> None:
    payload = Payload(SERVICE + "Sample", b"q")
    for inflight, expected in ((8, "4"), (2, "2"), (1, "1")):
        argv = loadgen_argv("127.0.0.1:1", [payload], Load(inflight, 1.0, 0.0, procs=4), tmp_path)
        assert argv[argv.index("--procs") + 1] == expected


def test_the_suite_runs_on_a_machine_without_the_triton_client() -> None:
    """A GPU box has no tritonclient: `--no-triton` must still import and run (it once failed there at import)."""
    code = "import sys; sys.modules['tritonclient'] = None; import benchmarks.suite, benchmarks.payloads"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_an_interrupted_run_keeps_the_rows_measured_so_far(tmp_path: Path) -> None:
    """A run cut by a deadline (timeout's SIGTERM) writes bench.json with the rows it has, marked interrupted,
    and exits non-zero: a device call once lost a whole run that way."""
    argv = [sys.executable, "-m", "benchmarks.suite", "--quick", "--no-triton", "--out", str(tmp_path)]
    with subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first measured load row: the servers are up and rows exist
            if " service " in line and "req/s" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest[-3000:]
    document = json.loads((tmp_path / "bench.json").read_text())
    assert document["meta"]["interrupted"] is True
    assert any(row.get("kind") == "load" and row.get("server") == "service" for row in document["rows"])
    assert "INTERRUPTED" in rest


def test_ab_runs_both_services_side_by_side_and_reads_their_gc_pauses() -> None:
    """`python -m benchmarks.ab`: every round of both services measured without errors, the medians table, and
    each service's GC pauses from its own /metrics (B freezes its start-up heap after one full collection, so it
    has at least that one generation-2 pause; the figures themselves are not judged)."""
    argv = [sys.executable, "-m", "benchmarks.ab", "--a", "--gc-freeze off", "--b", "--gc-freeze on",
            "--rounds", "2", "--seconds", "0.5", "--warmup", "0.2", "--inflight", "4"]  # fmt: skip
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("round ")] == [
        "round 1 A", "round 1 B", "round 2 B", "round 2 A"
    ]  # fmt: skip
    assert all(line.endswith("errors 0") for line in out.splitlines() if line.startswith("round "))
    assert "| req/s |" in out and "errors A 0, B 0" in out
    gc_rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in out.splitlines()
               if line.startswith(("| A |", "| B |"))}  # fmt: skip
    assert set(gc_rows) == {(side, generation) for side in "AB" for generation in "012"}
    assert int(gc_rows[("B", "2")].split("|")[3].replace(",", "")) >= 1


def test_deadline_burst_prints_both_echo_rows_and_the_fixed_limit_loses_nothing() -> None:
    """`python -m benchmarks.deadline_burst --echo-only`: the table, and no lost call with the service's limit."""
    argv = [sys.executable, "-m", "benchmarks.deadline_burst", "--echo-only", "--rounds", "1", "--repeats", "1"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [re.split(r"\s{2,}", line.strip()) for line in done.stdout.splitlines()]
    at = next(i for i, cells in enumerate(lines) if cells[0] == "server")  # the table's header; progress lines above
    rows = {cells[0]: dict(zip(lines[at], cells, strict=True)) for cells in lines[at + 1 :]}
    ours = f"echo, one limit of {Settings().max_pending_calls:,}"
    assert set(rows) == {"echo, grpc defaults", ours}, done.stdout
    assert rows[ours]["lost"] == "0" and rows["echo, grpc defaults"]["C calls"] == "1,500", done.stdout


def test_deadline_burst_measures_the_memory_of_held_calls() -> None:
    argv = [sys.executable, "-m", "benchmarks.deadline_burst", "--held-memory", "2000", "--block-s", "3"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kb_each = float(done.stdout.splitlines()[-1].split()[-1])
    assert 2 < kb_each < 200, done.stdout  # held calls cost memory: the backlog is real, and bounded per call
