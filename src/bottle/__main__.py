"""`python -m bottle`: the `bottle` command line."""

import sys

from bottle.cli import main

if __name__ == "__main__":
    sys.exit(main())
