"""``python pipelines/promote.py ...`` is ``hashing promote ...``; the job is ``hashing/jobs/promote.py`` (see
``--help``).

As a script (also ``ray job submit -- python pipelines/promote.py ...``) it runs the ``hashing promote``
command; imported (``import pipelines.promote``) it is the module ``hashing.jobs.promote`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["promote", *sys.argv[1:]]))
else:
    from hashing.jobs import promote as _job

    sys.modules[__name__] = _job
