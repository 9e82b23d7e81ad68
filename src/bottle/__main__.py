"""`python -m bottle`: the `bottle` command line."""

from bottle._console import main  # first: it takes Ctrl-C over before anything else loads

if __name__ == "__main__":
    import sys

    sys.exit(main())
