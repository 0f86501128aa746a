"""``python -m distill_nb ...``: see distill_nb.cli."""

import sys

from distill_nb.cli import main

if __name__ == "__main__":
    sys.exit(main())
