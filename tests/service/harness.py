"""The in-process server for tests (service/inprocess.py): a real server on a background thread, real loopback
gRPC channels, ports chosen by the OS."""

from service.inprocess import ServerThread, serving, stub_for

__all__ = ["ServerThread", "serving", "stub_for"]
