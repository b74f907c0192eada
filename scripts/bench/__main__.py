"""`python -m bench` (scripts/bench.sh runs it with scripts/ and tests/ on PYTHONPATH)."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
