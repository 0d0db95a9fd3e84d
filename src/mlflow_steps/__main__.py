"""`python -m mlflow_steps` runs the CLI."""

from mlflow_steps.cli.main import main

main()
