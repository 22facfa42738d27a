"""``python pipelines/demo.py ...`` is ``hashing demo ...``; the job is ``hashing/jobs/demo.py`` (see
``--help``).

As a script (also ``ray job submit -- python pipelines/demo.py ...``) it runs the ``hashing demo`` command;
imported (``import pipelines.demo``) it is the module ``hashing.jobs.demo`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["demo", *sys.argv[1:]]))
else:
    from hashing.jobs import demo as _job

    sys.modules[__name__] = _job
