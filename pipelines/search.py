"""``python pipelines/search.py ...`` = ``hashing search ...``: the job lives in ``hashing/jobs/search.py`` (see ``--help``).

Run as a script (also under ``ray job submit -- python pipelines/search.py``) it is the ``hashing search`` command;
imported (``import pipelines.search``) it is the module ``hashing.jobs.search`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["search", *sys.argv[1:]]))
else:
    from hashing.jobs import search as _job

    sys.modules[__name__] = _job
