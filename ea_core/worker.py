"""``python -m ea_core.worker RUN_FOLDER``: run one EA run in this process (see `ea_core.runs`).

Started by `RunManager.start`; the API key, if any, arrives as one JSON line on standard input.
"""

import sys

from ea_core.runs import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
