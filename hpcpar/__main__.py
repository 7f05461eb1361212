"""``python -m hpcpar``: the same as the ``hpcpar`` command."""

import sys

from .cli import main

sys.exit(main())
