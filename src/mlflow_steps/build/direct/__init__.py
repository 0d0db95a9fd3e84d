"""The engine-free builder (`--builder direct`): the environment is installed with uv into a
staging tree for the base's platform, written as deterministic layers and pushed with our
registry client on top of the base's layers. No engine, no root, no Dockerfile run."""


class NotApplicable(Exception):
    """The direct builder cannot make this image safely; the message says why. Raised before
    it pushes anything: ``--builder auto`` then builds with an engine, ``direct`` refuses."""
