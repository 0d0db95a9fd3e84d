"""Default values of the builder's inputs: FuseML's (its step contract), kept for drop-in
use, and ours."""

FUSEML_REGISTRY = "registry.fuseml-registry"
FUSEML_PULL_REGISTRY = "127.0.0.1:30500"
DEFAULT_REPOSITORY = "mlflow/trainer"
# The direct builder: a distribution this large installed (MB) gets a layer of its own
# (torch, nvidia-*, triton, ...): one blob in every image that has it.
OWN_LAYER_MB = 32
