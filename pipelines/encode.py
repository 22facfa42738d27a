"""``python pipelines/encode.py ...`` = ``hashing encode ...``: the job lives in ``hashing/jobs/encode.py`` (see ``--help``).

Run as a script (also under ``ray job submit -- python pipelines/encode.py``) it is the ``hashing encode`` command;
imported (``import pipelines.encode``) it is the module ``hashing.jobs.encode`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["encode", *sys.argv[1:]]))
else:
    from hashing.jobs import encode as _job

    sys.modules[__name__] = _job
