"""How the package's tools end: `run(main, errors)` exits with main()'s code, or
prints an expected error (one of `errors`) as one line on stderr and exits with
its code; anything else is a bug and keeps its traceback."""

import sys


def run(main, errors):
    """`errors`: [(exception type or tuple of types, message prefix, exit code)]."""
    try:
        sys.exit(main())
    except Exception as e:
        for types, prefix, code in errors:
            if isinstance(e, types):
                print(f"{prefix}{e}", file=sys.stderr)
                sys.exit(code)
        raise
