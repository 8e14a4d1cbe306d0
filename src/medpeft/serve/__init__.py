"""HTTP serving of many task adapters on one frozen backbone (``medpeft serve``).

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart, prometheus-client).
"""

from medpeft.serve.app import create_app
from medpeft.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
