"""HTTP API and web page over the Recognizer: ``ferkit serve`` (needs the ``serve`` extra: FastAPI, uvicorn).

``ServeConfig`` and the micro-batcher import without FastAPI; ``ferkit.serve.app`` needs it.
"""
from ferkit.serve.settings import ServeConfig

__all__ = ["ServeConfig"]
