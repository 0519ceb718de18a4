"""``python -m maskrcnn``: the ``maskrcnn`` command."""

import sys

from .cli import main

sys.exit(main())
