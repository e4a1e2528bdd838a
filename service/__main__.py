"""`python -m service`: serve the model repository over gRPC (see `--help`).

With `--workers 1` (the default) this process is the server. With more, it is the supervisor of that many server
processes (service/supervisor.py), and imports neither torch nor the server itself.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from service.config import load_settings
from vaecore.repository import RepositoryError


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        from service.supervisor import supervise

        return supervise(settings)
    from service.server import serve

    try:
        asyncio.run(serve(settings))
    except (RepositoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
