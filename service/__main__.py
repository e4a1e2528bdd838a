"""`python -m service`: serve the model repository over gRPC (see `--help`)."""

from __future__ import annotations

import asyncio
import logging
import sys

from service.config import load_settings
from service.server import serve
from vaecore.repository import RepositoryError


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(argv)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except (RepositoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
