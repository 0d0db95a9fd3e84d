"""mlflow-steps: FuseML-compatible workflow steps for MLflow projects."""

__version__ = "0.1.0"
