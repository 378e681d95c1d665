"""``python -m sane`` is the same as the ``sane`` command."""

import sys

from sane.cli import main

sys.exit(main())
