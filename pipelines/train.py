"""``python pipelines/train.py ...`` is ``hashing train ...``; the job is ``hashing/jobs/train.py`` (see
``--help``).

As a script (also ``ray job submit -- python pipelines/train.py ...``) it runs the ``hashing train`` command;
imported (``import pipelines.train``) it is the module ``hashing.jobs.train`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
else:
    from hashing.jobs import train as _job

    sys.modules[__name__] = _job
