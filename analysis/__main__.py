"""``python -m analysis`` (and the ``deba-analysis`` console script): see :mod:`analysis.cli`."""

import sys

from analysis.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
