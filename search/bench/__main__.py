"""`python -m search.bench`: see `search.bench.suite`."""

import sys

from search.bench.suite import main

if __name__ == "__main__":
    sys.exit(main())
