"""The "models from code" file of the logged hashing model: MLflow runs it by path to get the model.

Only absolute imports (MLflow loads this file as a module of its own, outside any package); the class
lives in ``hashing.mlflow.pyfunc``, which the logged model carries in its ``code/`` folder.
"""

import mlflow

from hashing.mlflow.pyfunc import HashingPyfunc

mlflow.models.set_model(HashingPyfunc())
