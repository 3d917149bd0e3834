"""``python -m diffcut_engine`` is the ``diffcut`` command."""

import sys

from .cli import main

sys.exit(main())
