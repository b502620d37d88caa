"""``python -m tracedpool``: the command line (see tracedpool._cli.main)."""

import sys

from ._cli.main import main

sys.exit(main())
