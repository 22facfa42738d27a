"""``python pipelines/encode.py ...`` is ``hashing encode ...``; the job is ``hashing/jobs/encode.py`` (see
``--help``).

As a script (also ``ray job submit -- python pipelines/encode.py ...``) it runs the ``hashing encode``
command; imported (``import pipelines.encode``) it is the module ``hashing.jobs.encode`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["encode", *sys.argv[1:]]))
else:
    from hashing.jobs import encode as _job

    sys.modules[__name__] = _job
