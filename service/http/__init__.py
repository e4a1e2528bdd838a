"""The HTTP/JSON front (`--http-port`): every RPC of vae.v1 by its `google.api.http` mapping, served by the same
instrumented handlers as gRPC (same validation, limits, metrics, auth), on the same event loop.

    routes.py     the mapping, read from the proto descriptors: one table for this server and any transcoder
    transcode.py  HTTP request -> proto request (proto3 JSON, path and query fields); replies and errors -> JSON
    context.py    the ServicerContext the handlers see under HTTP (deadline, abort)
    server.py     the aiohttp application: routing, auth, streaming (NDJSON), PNG replies, TLS
"""
