"""``python -m notebook_exp_viewer [--store PATH] [--host H] [--port P] [--show]``."""

import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
