"""The ASGI app uvicorn serves: MLflow's FastAPI app, behind the token gate when one is set.

Served as ``uvicorn --factory mlflow_steps.server.app:create_app``; MLflow's own server
settings (store, artifacts) arrive as the environment variables ``serve`` sets.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mlflow_steps.core import mlflow_compat
from mlflow_steps.server.auth import TokenGate
from mlflow_steps.server.config import TOKEN

if TYPE_CHECKING:
    from starlette.types import ASGIApp


def create_app() -> ASGIApp:
    """MLflow's app, gated by ``MLFLOW_TRACKING_TOKEN`` when it is set."""
    app = mlflow_compat.server_asgi_app()
    token = os.environ.get(TOKEN)
    return TokenGate(app, token) if token else app
