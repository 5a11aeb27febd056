"""``python -m cosihost.worker``: see :mod:`cosihost.worker.entry`."""

import sys

from .entry import main

sys.exit(main(sys.argv[1:]))
