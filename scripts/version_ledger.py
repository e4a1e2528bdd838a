"""The version ledger at scale, on the shipped model: versions 2 (its decoder retrained, the same latent space) and
3 (its encoder retrained, another space) are made from the shipped `mnist` in a temporary repository, then 10^5
concurrent mixed requests run against the real server while the admin service splits, switches, rolls back,
unloads and loads versions over and over. The rules are in tests/service/version_ledger.py (10^4 in the tests).

    .venv/bin/python scripts/version_ledger.py [--requests 100000] [--backend local|triton]

With `--backend triton` the networks run in a real tritonserver (the Python-backend variant of the same
repository) in explicit model-control mode, which the service drives. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from service.config import DEFAULT_REPOSITORY, Settings  # noqa: E402
from service.inprocess import serving  # noqa: E402
from tests.service.version_ledger import run_version_ledger  # noqa: E402
from tests.service.versions import ADMIN_TOKEN  # noqa: E402
from training.export import export_repository  # noqa: E402
from training.model import load_checkpoint  # noqa: E402

MODEL = "mnist"


def versioned_copy(source: Path, target: Path) -> Path:
    """`mnist` alone, in versions 1 (as shipped), 2 (decoder perturbed) and 3 (encoder perturbed)."""
    target.mkdir(parents=True)
    for name in (f"{MODEL}.vae.json", f"{MODEL}_encoder", f"{MODEL}_decoder"):
        (shutil.copytree if (source / name).is_dir() else shutil.copyfile)(source / name, target / name)
    model, record = load_checkpoint(target / f"{MODEL}.vae.json")
    evaluation = {"test_nll": 0.0}
    for version, part in (("2", "decoder"), ("3", "encoder")):
        changed = copy.deepcopy(model)
        generator = torch.Generator().manual_seed(int(version))
        with torch.no_grad():
            for parameter in getattr(changed, part).parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        export_repository(changed, record, target, MODEL, max_batch_size=64, evaluation=evaluation, version=version,
                          make_default=False, attribute_images=2000)  # fmt: skip
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--min-changes", type=int, default=100)
    parser.add_argument("--backend", choices=("local", "triton"), default="local")
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {line}", flush=True)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="version-ledger-")))
        repo = versioned_copy(args.model_repository, tmp / "repo")
        progress(f"{MODEL} in versions 1, 2, 3 at {repo}")
        (tmp / "admin").write_text(f"{ADMIN_TOKEN}\n")
        settings = Settings(host="127.0.0.1", port=0, metrics_port=-1, model_repository=repo, max_batch_size=16,
                            admin_token_file=str(tmp / "admin"), unload_grace_s=5.0)  # fmt: skip
        if args.backend == "triton":
            from training.export import derive_python_variant
            from training.triton_local import TritonServer

            derive_python_variant(repo, tmp / "python", max_batch_size=64)
            triton = TritonServer(tmp / "python", tmp / "triton", model_control="explicit").start(timeout_s=300)
            stack.callback(triton.stop)
            settings = Settings(**{**settings.__dict__, "backend": "triton", "triton_url": triton.grpc_url,
                                   "triton_model_control": "explicit"})  # fmt: skip
            progress(f"tritonserver (explicit model control) at {triton.grpc_url}")
        server = stack.enter_context(serving(settings))
        progress(f"server on {server.address}; {args.requests} requests, {args.concurrency} in flight")
        run = run_version_ledger(server.address, args.requests, args.concurrency, args.min_changes, model=MODEL)
    for problem in run.problems[:50]:
        print(f"PROBLEM: {problem}")
    print(run.table())
    print("changes:", ", ".join(f"{what} x{n}" for what, n in Counter(c.what for c in run.changes).items()))
    traffic_s = max(o.done for o in run.outcomes) - min(o.sent for o in run.outcomes)
    print(f"traffic {traffic_s:.1f} s ({len(run.outcomes) / traffic_s:.0f} requests/s); total "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    checks = "FAILED" if run.problems else "all checks passed"
    print(f"{checks}: one OK answer per request, from a version routed to during its life, equal to it alone")
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
