"""``python -m hashing JOB ...``: the same as the ``hashing`` command (``hashing.cli``)."""

import sys

from hashing.cli import main

sys.exit(main())
