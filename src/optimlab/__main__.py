"""``python -m optimlab``: the same command line as the ``optimlab`` console script."""

import sys

from optimlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
