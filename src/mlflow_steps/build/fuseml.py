"""Default values of FuseML's builder inputs (its step contract), kept for drop-in use."""

FUSEML_REGISTRY = "registry.fuseml-registry"
FUSEML_PULL_REGISTRY = "127.0.0.1:30500"
DEFAULT_REPOSITORY = "mlflow/trainer"
