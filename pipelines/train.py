"""``python pipelines/train.py ...`` = ``hashing train ...``: the job lives in ``hashing/jobs/train.py`` (see ``--help``).

Run as a script (also under ``ray job submit -- python pipelines/train.py``) it is the ``hashing train`` command;
imported (``import pipelines.train``) it is the module ``hashing.jobs.train`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
else:
    from hashing.jobs import train as _job

    sys.modules[__name__] = _job
