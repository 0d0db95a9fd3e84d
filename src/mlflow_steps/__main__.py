"""`python -m mlflow_steps` runs the CLI."""

from mlflow_steps.cli import main

main()
