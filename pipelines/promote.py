"""``python pipelines/promote.py ...`` = ``hashing promote ...``: the job lives in ``hashing/jobs/promote.py`` (see ``--help``).

Run as a script (also under ``ray job submit -- python pipelines/promote.py``) it is the ``hashing promote`` command;
imported (``import pipelines.promote``) it is the module ``hashing.jobs.promote`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["promote", *sys.argv[1:]]))
else:
    from hashing.jobs import promote as _job

    sys.modules[__name__] = _job
