"""Container health check: asks the server's standard gRPC health service; exit 0 only when SERVING.

    python -m service.healthcheck [--target 127.0.0.1:50051] [--service vae.v1.VaeService] [--timeout 3]

The default target follows VAE_PORT, so the image's HEALTHCHECK stays right when the port is changed.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(target: str, service: str, timeout_s: float) -> str:
    """The serving status's name, or the gRPC error's code name when the server cannot be asked."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        return exc.code().name  # type: ignore[no-any-return]
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.healthcheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--target", default=f"127.0.0.1:{os.environ.get('VAE_PORT', '50051')}")
    parser.add_argument("--service", default="vae.v1.VaeService", help="health name; empty for the server itself")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    status = check(args.target, args.service, args.timeout)
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
