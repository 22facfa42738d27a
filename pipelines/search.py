"""``python pipelines/search.py ...`` is ``hashing search ...``; the job is ``hashing/jobs/search.py`` (see
``--help``).

As a script (also ``ray job submit -- python pipelines/search.py ...``) it runs the ``hashing search``
command; imported (``import pipelines.search``) it is the module ``hashing.jobs.search`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["search", *sys.argv[1:]]))
else:
    from hashing.jobs import search as _job

    sys.modules[__name__] = _job
