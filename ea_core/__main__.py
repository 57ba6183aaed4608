"""`python -m ea_core ...` entry point."""

import sys

from ea_core.cli import main

sys.exit(main())
