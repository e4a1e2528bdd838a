"""Container health check: asks the server's standard gRPC health service; exit 0 only when SERVING.

    python -m service.healthcheck [--target 127.0.0.1:50051] [--service vae.v1.VaeService] [--timeout 3]
                                  [--tls-ca-file CA.pem [--tls-cert-file C.pem --tls-key-file C.key]]

The default target follows VAE_PORT, so the image's HEALTHCHECK stays right when the port is changed. With TLS
on the server (docs/operations.md "Security"), pass the CA that signed its certificate (and, under mutual TLS, a client
certificate); each option also reads VAE_HEALTHCHECK_<OPTION>, e.g. VAE_HEALTHCHECK_TLS_CA_FILE, so an image's
HEALTHCHECK line needs no change. The health service needs no token.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vae_client.credentials import client_channel

TLS_OPTIONS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name")


def check(target: str, service: str, timeout_s: float, **tls: str | None) -> str:
    """The serving status's name, or the gRPC error's code name when the server cannot be asked."""
    try:
        with client_channel(
            target, ca_file=tls.get("tls_ca_file"), cert_file=tls.get("tls_cert_file"),
            key_file=tls.get("tls_key_file"), server_name=tls.get("tls_server_name"),
        ) as channel:  # fmt: skip
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
    for option in TLS_OPTIONS:
        env = f"VAE_HEALTHCHECK_{option.upper()}"
        parser.add_argument(f"--{option.replace('_', '-')}", default=os.environ.get(env) or None, help=f"env {env}")
    args = parser.parse_args(argv)
    status = check(args.target, args.service, args.timeout, **{o: getattr(args, o) for o in TLS_OPTIONS})
    print(f"{args.target} {args.service or '(server)'}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
