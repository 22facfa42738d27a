"""MLflow in one package: every experiment, registered-model, alias, tag and artifact name, and the helpers.

    names.py         the names: experiments, registered models, aliases, run and model-version tags,
                     artifact files, the model format
    runs.py          tracking URI, server check, experiments, logging a config / figure / evaluation
    model_files.py   a method as two files (``state_dict.safetensors`` + ``config.json``) and back
    logged_model.py  logging that pair as an MLflow pyfunc model, loading it back
    pyfunc.py        the pyfunc model class (``predict``: images -> packed codes)
    model_code.py    the "models from code" file MLflow runs to get that class
    registry.py      registering, resolving names / aliases to pinned versions, version tags, codes location
    version_evaluation.py  a version's latest evaluation (``eval_*`` tags) and checking it against its run

Modules here ``import mlflow`` (absolute imports: the real MLflow, not this package). Nothing is
imported at package level, so ``import hashing.mlflow.names`` stays cheap.
"""
