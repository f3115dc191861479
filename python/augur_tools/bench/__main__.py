"""`python -m augur_tools.bench` (make bench-e2e): see augur_tools.bench.measure."""

import sys

from augur_tools.bench.measure import BenchError, main

try:
    sys.exit(main())
except BenchError as e:
    print(f"bench-e2e: {e}", file=sys.stderr)
    sys.exit(1)
