"""`python -m waveglow.bench '<case json>'`: run one case and print its row as one JSON line.

The child process of `waveglow.bench.run_case_isolated`; not a user-facing command.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from waveglow.bench.cases import Case, run_case
from waveglow.bench.report import json_safe
from waveglow.errors import UserError


def main(argv: Sequence[str]) -> int:
    """Run the case `argv[0]` (a `Case` as JSON); exit status 2 on a user error."""
    try:
        row = run_case(Case(**json.loads(argv[0])))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(json_safe(row)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
