"""`python -m service.cli`: the command line lives in the vae-client distribution (vae_client/cli.py); this keeps
the documented entry point working."""

import sys

from vae_client.cli import main

if __name__ == "__main__":
    sys.exit(main())
