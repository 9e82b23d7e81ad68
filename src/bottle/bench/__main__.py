"""`python -m bottle.bench`: the same as `bottle bench`."""

import sys

from bottle.bench.cli import main

sys.exit(main())
