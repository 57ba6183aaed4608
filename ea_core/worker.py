"""``python -m ea_core.worker RUN_FOLDER``: run one EA run in this process (see `ea_core.runs`).

Started by `RunManager.start`; the API key, if any, arrives as one JSON line on standard input.
The worker first waits for its run's turn in the runs folder's queue (`ea_core.runqueue`, at a
lower CPU priority), importing the engine only once admitted: a queued run costs little memory.
"""

import sys
from pathlib import Path
from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        from ea_core.runs import worker_main

        return worker_main(args)
    line = sys.stdin.readline()
    sys.stdin.close()
    from ea_core.runqueue import leave_queue, wait_in_queue

    folder = Path(args[0])
    code = wait_in_queue(folder)
    if code is not None:
        return code
    try:
        from ea_core.runs import worker_main

        return worker_main(args, key_line=line)
    finally:
        leave_queue(folder)


if __name__ == "__main__":
    sys.exit(main())
