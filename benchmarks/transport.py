"""The transport limit: a bare grpc.aio server answering the service's method paths with fixed reply bytes.

It parses nothing and computes nothing; each reply is the real service's reply to the benchmark's request,
captured once, so the bytes on the wire are the same size. What the service reaches of this server's
requests/s, under the same load generator, is the share of the transport it keeps.

    python -m benchmarks.transport --port 50052 --reply /vae.v1.VaeService/Sample sample.bin [--reply ...]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

MAX_MESSAGE = 512 * 1024 * 1024


def _answer(reply: bytes):  # type: ignore[no-untyped-def]
    async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return reply

    return handler


def handlers(replies: dict[str, bytes]) -> list[grpc.GenericRpcHandler]:
    """One generic handler per service; no (de)serializers, so requests and replies stay bytes."""
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = defaultdict(dict)
    for path, reply in replies.items():
        service, method = path.strip("/").split("/")
        by_service[service][method] = grpc.unary_unary_rpc_method_handler(_answer(reply))
    return [grpc.method_handlers_generic_handler(s, methods) for s, methods in by_service.items()]


async def serve(port: int, replies: dict[str, bytes]) -> None:
    options = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(handlers(replies))
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    for service in {"", *(path.strip("/").split("/")[0] for path in replies)}:
        await checks.set(service, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(1.0)


def spawn_copies(args: argparse.Namespace) -> list[subprocess.Popen[bytes]]:
    """processes - 1 more servers on the same port (grpc sets SO_REUSEPORT), as the service's --workers does."""
    argv = [sys.executable, "-m", "benchmarks.transport", "--port", str(args.port)]
    for path, file in args.reply:
        argv += ["--reply", path, file]
    return [subprocess.Popen(argv) for _ in range(args.processes - 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reply", nargs=2, action="append", required=True, metavar=("METHOD", "REPLY_FILE"))
    parser.add_argument("--processes", type=int, default=1, help="server processes sharing the port")
    args = parser.parse_args(argv)
    copies = spawn_copies(args)
    try:
        asyncio.run(serve(args.port, {path: Path(file).read_bytes() for path, file in args.reply}))
    finally:
        for copy in copies:
            copy.terminate()
            copy.wait(10)


if __name__ == "__main__":
    main()
