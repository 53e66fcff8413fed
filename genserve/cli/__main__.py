"""``python -m genserve.cli``: the ``genserve`` command."""

import sys

from genserve.cli import main

sys.exit(main())
