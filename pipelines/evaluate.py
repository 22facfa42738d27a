"""``python pipelines/evaluate.py ...`` is ``hashing evaluate ...``; the job is ``hashing/jobs/evaluate.py``
(see ``--help``).

As a script (also ``ray job submit -- python pipelines/evaluate.py ...``) it runs the ``hashing evaluate``
command; imported (``import pipelines.evaluate``) it is the module ``hashing.jobs.evaluate`` itself.
"""

import sys

if __name__ == "__main__":
    from hashing.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
else:
    from hashing.jobs import evaluate as _job

    sys.modules[__name__] = _job
