"""The jobs (recipes) behind the ``hashing`` command and ``pipelines/*.py``: one module each, with
``run_cli(config, args)`` (the job, results printed) and ``main(argv)`` (the whole command line).

Their parsers live in ``hashing.cli`` and the shared wrapper in ``hashing.jobs.runner``, so that
``--help`` imports neither torch, Ray nor MLflow.
"""
