"""Models-from-code entry point: MLflow executes this file to build the registered pyfunc.

It is copied into every logged model; `flows` and `deploy` come with it as `code_paths`.
"""

import mlflow

from deploy.pyfunc import FlowPyfunc

mlflow.models.set_model(FlowPyfunc())
