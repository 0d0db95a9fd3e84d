"""The `mlflow-steps` command line: thin click commands over the stages."""
