"""The FastAPI application of ``ferkit serve``: /v1/predict, /v1/model, /healthz, /readyz and the web page."""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hmac
import io
import logging
import os
import re
import sys
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ferkit.data.augment import TTA_MODES
from ferkit.detect import sample_image_path
from ferkit.detect.image import decode_image, open_image
from ferkit.engine.modelfile import ModelMeta
from ferkit.engine import modelfile
from ferkit.engine.options import check_options
from ferkit.engine.runtime import resolve_device
from ferkit.engine.predict import Recognizer, Result
from ferkit.engine.schema import PredictResponse
from ferkit.errors import FerkitError
from ferkit.serve.batcher import MicroBatcher, PredictOptions, QueueFull
from ferkit.serve.settings import API_KEY_ENV, CONFIG_ENV, ServeConfig

API_VERSION = "v1"
BULKY_META_KEYS = ("training",)  # the full training record: kilobytes a client rarely needs
RAW_TYPES = ("image/", "application/octet-stream")
MULTIPART_OVERHEAD = 64 * 1024  # bytes of part headers and boundaries allowed beyond the files themselves
RETRY_AFTER_S = 1

log = logging.getLogger("ferkit.serve")


class ApiError(Exception):
    """An answer other than 200: a status code and one sentence for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers, extra


def _sentence(text: str) -> str:
    """``text`` ending as a sentence, without Pillow's object addresses (``<_io.BytesIO object at 0x...>``)."""
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", text).strip()
    return text if text.endswith((".", "?", "!")) else text + "."


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def model_path(config: ServeConfig) -> Path:
    """The file of ``config.model`` (a shipped model name or a model file); FerkitError if there is none."""
    path = modelfile.model_path(config.model)
    if not path.is_file():
        raise FerkitError(f"{config.model}: no such model file")
    return path


def load_recognizer(config: ServeConfig) -> Recognizer:
    """The Recognizer of ``config.model``."""
    return Recognizer.load(model_path(config), backend=config.backend, device=str(resolve_device(config.device)))


def warm_up(recognizer: Recognizer) -> None:
    """One call on the sample photo, so the first client does not pay for lazy initialisation."""
    recognizer([sample_image_path()], keep_images=False)


def public_meta(meta: ModelMeta) -> dict[str, Any]:
    """The model's metadata as JSON, bulky keys left out."""
    return {k: v for k, v in meta.to_dict().items() if k not in BULKY_META_KEYS}


def upload_pixels(data: bytes, name: str, max_pixels: int) -> int:
    """The pixel count an upload's header declares, read before any decoding; ApiError 413 over the
    per-image limit; 0 when it is not an image (its decoding then says why)."""
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)

    def too_big(size: str) -> ApiError:
        return ApiError(413, f"{name}: the image has more pixels{size} than this server's limit of {limit}.")

    try:
        with open_image(io.BytesIO(data)) as im:  # reads the header only: the size before any decoding
            width, height = im.size
    except Image.DecompressionBombError:  # Pillow's own refusal, at twice its limit
        raise too_big("") from None
    except Exception:  # decode_image says why it is not an image
        return 0
    if width * height > limit:
        raise too_big(f" ({width} x {height})")
    return width * height


def decode_upload(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """An uploaded image as an RGB array; ApiError 413 over the pixel limit, FerkitError if not an image."""
    upload_pixels(data, name, max_pixels)
    return decode_image(data, name)


class PixelBudget:
    """The pixels the server's requests may hold decoded at once: a request waits for its share before
    decoding, so memory follows this budget, not the number or size of the requests sent.

    16 flat 6300 x 6300 PNGs (0.8 MB compressed) took the server from 0.7 to 2.8 GB when every request
    decoded on arrival.
    """

    def __init__(self, pixels: int):
        self.pixels, self.held = pixels, 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def hold(self, pixels: int, timeout: float) -> AsyncIterator[None]:
        """Hold ``pixels`` (at most the budget) for the block; QueueFull after ``timeout`` s of waiting for them."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.held + pixels <= self.pixels), timeout)
            except asyncio.TimeoutError:
                raise QueueFull from None
            self.held += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.held -= pixels
                self._changed.notify_all()


def _limited_receive(receive: Callable, limit: int, timeout_s: float) -> Callable:
    """``receive`` that fails with 413 past ``limit`` body bytes and with 408 after ``timeout_s`` seconds."""
    received = 0
    deadline = time.monotonic() + timeout_s

    async def limited() -> dict:
        nonlocal received
        try:
            message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise ApiError(408, f"The request body took longer than {timeout_s:g} s to arrive.") from None
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise ApiError(413, f"The request body is larger than this server's limit of {limit} bytes.")
        return message

    return limited


async def read_uploads(request: Request, config: ServeConfig) -> list[tuple[str, bytes]]:
    """The images a request carries, (name, bytes) each: multipart files or one raw body."""
    content_type = request.headers.get("content-type", "application/octet-stream").lower()
    multipart = content_type.startswith("multipart/form-data")
    if not multipart and not content_type.startswith(RAW_TYPES):
        raise ApiError(415, f"Content type {content_type.split(';')[0]!r} is not accepted: send images as "
                            "multipart/form-data files or as one raw image body.")
    limit = config.max_upload_bytes * config.max_files + MULTIPART_OVERHEAD if multipart else config.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body ({declared} bytes) is larger than this server's limit of {limit} bytes.")
    body = Request(request.scope, _limited_receive(request.receive, limit, config.upload_timeout_s))
    try:
        if not multipart:
            data = await body.body()
            return [("<body>", data)] if data else []
        try:
            form = await body.form(max_files=config.max_files + 1, max_fields=config.max_files + 100)
        except StarletteHTTPException as e:  # Starlette's reason for a malformed or oversized multipart body
            if str(e.detail).startswith("Too many files"):
                raise ApiError(413, f"Too many images in one request: at most {config.max_files} "
                                    "are allowed.") from None
            raise ApiError(400, f"The multipart body could not be read: {e.detail}") from None
        try:
            files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            if len(files) > config.max_files:
                raise ApiError(413, f"Too many images in one request: {len(files)} sent, at most "
                                    f"{config.max_files} are allowed.")
            return [(upload.filename or f"<file {n}>", await upload.read()) for n, upload in enumerate(files)]
        finally:
            await form.close()  # spooled temporary files go now, not when the garbage collector gets to them
    except ClientDisconnect:
        raise ApiError(400, "The client disconnected before the request body arrived.") from None


def _api_key_check(config: ServeConfig) -> Callable:
    """A dependency that lets a request through only with the API key, when one is set."""
    expected = config.api_key.encode() if config.api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[len("bearer "):].strip()
        if given is None or not hmac.compare_digest(given.encode(), expected):
            raise ApiError(401, "A valid API key is needed: send it in the X-API-Key header.",
                           headers={"WWW-Authenticate": "Bearer"})

    return check


PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


PREDICT_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"description": "per image, in the order sent: source, status (ok, no_face, error and why), size and "
                        "faces (box, label, confidence, probs, eyes); an image that cannot be read costs only itself"},
    400: {"description": "no image in the request, or a malformed multipart body"},
    401: {"description": "the API key is missing or wrong (only when the server has one)"},
    408: {"description": "the request body arrived too slowly"},
    413: {"description": "an image or the body over the size limit, too many images, or too many pixels"},
    415: {"description": "neither multipart/form-data nor an image body"},
    422: {"description": "a bad option"},
    503: {"description": "the model is loading, or too many requests are waiting (see Retry-After)"},
    504: {"description": "the model did not answer in time"},
}


def create_app(config: ServeConfig | None = None, load: Callable[[], Recognizer] | None = None) -> FastAPI:
    """The application; ``load`` (default: the model of ``config``) runs in the model thread at startup."""
    config = config or ServeConfig()
    batcher = MicroBatcher(load or (lambda: load_recognizer(config)), batching=config.batching,
                           max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000,
                           queue_size=config.queue_size, warmup=warm_up)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await run_in_threadpool(batcher.close)

    from ferkit import __version__

    # The docs page ships with the package (FastAPI's own pages load their viewers from a CDN).
    app = FastAPI(title="ferkit", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Facial expressions of the faces in images. Send images to "
                              f"POST /{API_VERSION}/predict as multipart files or as one raw image body. "
                              f"When the server has an API key, /{API_VERSION}/* needs it in the X-API-Key "
                              "header (or Authorization: Bearer). Errors are JSON: {\"error\": \"one sentence\"}.")
    app.state.batcher, app.state.config = batcher, config
    if config.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization"])

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status == 413:
            # A refused upload is answered late, at no cost to the server: a client sending pixel bombs or
            # oversized bodies in a loop (16 6300 x 6300 PNGs in 0.8 MB, 130 a second) halved the honest
            # clients' throughput with the parsing it cost; one a second per connection costs nothing.
            await asyncio.sleep(config.refusal_delay_s)
        return _error(exc.status, _sentence(exc.message), exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = " ".join(str(part) for part in first.get("loc", ()))
        return _error(422, _sentence(f"{where}: {first.get('msg', 'invalid value')}"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _sentence(str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, "The server failed on this request; the error is in its log.")

    def recognizer_ready() -> Recognizer:
        if batcher.load_error:
            raise ApiError(503, f"The model could not be loaded: {batcher.load_error}")
        if not batcher.ready.is_set():
            raise ApiError(503, "The model is still loading; try again in a few seconds.",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        return batcher.recognizer

    @app.get("/healthz", tags=["health"], summary="The server answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="The model is loaded and warmed up")
    def readyz() -> dict[str, Any]:
        recognizer = recognizer_ready()
        return {"status": "ready", "model": recognizer.meta.name, "backend": recognizer.backend,
                "batching": config.batching, "model_calls": batcher.model_calls, "images": batcher.images_done}

    pixel_budget = PixelBudget(config.pixel_budget)

    async def decode_and_predict(uploads: list[tuple[str, bytes]], options: PredictOptions,
                                 busy: ApiError) -> list[Result]:
        """Decode the uploads and run the model on those that could be read; one that cannot be read gets its
        own error result in its place, so it costs only itself."""
        images, results = [], []
        for name, data in uploads:
            try:
                images.append(await run_in_threadpool(decode_upload, data, name, config.max_pixels))
                results.append(None)
            except FerkitError as e:
                results.append(Result(name, status="error", error=_sentence(str(e))))
        if images:
            try:
                future = batcher.submit(images, options)
            except QueueFull:
                raise busy from None
            try:
                found = iter(await asyncio.wait_for(asyncio.wrap_future(future), config.predict_timeout_s))
            except asyncio.TimeoutError:
                raise
            except Exception:  # logged here, never sent: a trace could show paths and code
                log.exception("the model failed on a request")
                raise ApiError(500, "The model failed on this request; the reason is in the server's log.") from None
            results = [result if result is not None else next(found) for result in results]
        return results

    api = APIRouter(prefix=f"/{API_VERSION}", dependencies=[Depends(_api_key_check(config))], tags=["api"])

    @api.get("/model", summary="The model's metadata")
    def model() -> dict[str, Any]:
        return public_meta(recognizer_ready().meta)

    @api.post("/predict", summary="Expressions of the faces in one or more images", openapi_extra=PREDICT_BODY,
              responses=PREDICT_ANSWERS, response_model=PredictResponse)
    async def predict(
        request: Request,
        detect: bool = Query(True, description="find faces; false: each image is a face crop"),
        tta: str | None = Query(None, description=f"test-time views, one of {', '.join(TTA_MODES)} "
                                                  "(default: the model's)"),
        min_face: int | None = Query(None, description="smallest face to find, pixels of the photo"),
    ) -> PredictResponse:
        try:
            check_options(tta=tta, min_face=1 if min_face is None else min_face)
        except FerkitError as e:
            raise ApiError(422, str(e)) from None
        uploads = await read_uploads(request, config)
        if not uploads:
            raise ApiError(400, "No image in the request: send multipart files or one raw image body.")
        too_big = [name for name, data in uploads if len(data) > config.max_upload_bytes]
        if too_big:
            raise ApiError(413, f"{too_big[0]}: the file is larger than this server's limit of "
                                f"{config.max_upload_bytes} bytes per image.")
        recognizer = recognizer_ready()
        pixels = sum(upload_pixels(data, name, config.max_pixels) for name, data in uploads)
        if pixels > config.pixel_budget:
            raise ApiError(413, f"The images hold {pixels} pixels together, more than this server decodes for one "
                                f"request ({config.pixel_budget}); send fewer or smaller images per request.")
        busy = ApiError(503, "The server is busy: too many requests are waiting for the model; retry shortly.",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
        if batcher.full():  # said before anything is decoded
            raise busy
        try:
            async with pixel_budget.hold(pixels, config.predict_timeout_s):
                results = await decode_and_predict(uploads, PredictOptions(detect, tta, min_face), busy)
        except QueueFull:
            raise busy from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"The model did not answer within {config.predict_timeout_s:g} s; "
                                "retry later.") from None
        records = []
        for (name, _), result in zip(uploads, results):
            result.source, result.model = name, recognizer.meta.name
            records.append(result.to_record())
        return PredictResponse(model=recognizer.meta.name, images=records)

    app.include_router(api)

    static = Path(str(resources.files("ferkit.serve") / "static"))
    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(static / "docs.html")

    return app


def app_from_environment() -> FastAPI:
    """The application of a uvicorn worker process: settings from the environment (``--workers`` > 1)."""
    limit_malloc_arenas()
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV], api_key=os.environ.get(API_KEY_ENV)))


MALLOC_ARENAS = 2  # C heaps the server's threads share (glibc's default: 8 per core)
M_ARENA_MAX = -8   # mallopt's parameter number for it (malloc.h)


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Let the process's threads share ``count`` glibc heaps; False where the C library is not glibc.

    Every thread that decodes an upload can otherwise get a heap of its own, each keeping the freed
    memory of the photos it decoded: in a pair of runs here (16 clients, the same throughput) the server
    started at 830 MB under load without the limit and at 648 MB with it.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    return bool(mallopt and mallopt(M_ARENA_MAX, count) == 1)


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted: uvicorn on ``config.host:config.port``, ``config.workers`` processes."""
    import uvicorn

    from ferkit.serve.connections import HEAD_LIMIT_BYTES, GuardedH11Protocol, raise_open_file_limit

    # A connection gets header_timeout_s for each request head and 5 s of silence after a response; one
    # that sends nothing is closed as soon as one that trickles. So no connection count is limited (silent
    # sockets counted toward uvicorn's limit made every new client get 503): the model's queue answers 503
    # when it is full, and the open-file limit is raised for the sockets.
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(f"ferkit serve: warning: listening on {config.host} without an API key: anyone who can reach "
              "this port can use the model (set --api-key-file or FERKIT_API_KEY)", file=sys.stderr)
    limit_malloc_arenas()
    raise_open_file_limit()
    GuardedH11Protocol.header_timeout = config.header_timeout_s
    options = dict(host=config.host, port=config.port, timeout_keep_alive=5, server_header=False,
                   http=GuardedH11Protocol, h11_max_incomplete_event_size=HEAD_LIMIT_BYTES,
                   timeout_graceful_shutdown=10)
    if config.workers == 1:
        recognizer = load_recognizer(config)  # a bad model fails here, in one line, before the server listens
        uvicorn.run(create_app(config, load=lambda: recognizer), **options)
        return
    model_path(config)  # each worker process loads its own model; a missing one fails here first
    resolve_device(config.device)  # as does a device that is not there
    os.environ[CONFIG_ENV] = config.to_json()
    if config.api_key:
        os.environ[API_KEY_ENV] = config.api_key
    uvicorn.run("ferkit.serve.app:app_from_environment", factory=True, workers=config.workers, **options)
