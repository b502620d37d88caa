"""``python -m tracedpool``: the command line (see tracedpool._cli)."""

import sys

from ._cli import main

sys.exit(main())
