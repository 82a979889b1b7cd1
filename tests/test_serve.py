"""ferkit serve: the HTTP API in process, the micro-batcher, the command as a user runs it, the page in Chromium."""
from __future__ import annotations

import csv
import asyncio
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("python_multipart")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.config import load_config  # noqa: E402
from ferkit.data import FER_CLASSES  # noqa: E402
from ferkit.detect import sample_image_path  # noqa: E402
from ferkit.engine.modelfile import ModelMeta, build_model, save  # noqa: E402
from ferkit.engine.predict import FaceResult, Result  # noqa: E402
from ferkit.serve import ServeConfig  # noqa: E402
from ferkit.serve.app import create_app  # noqa: E402
from ferkit.serve.batcher import MicroBatcher, PredictOptions, QueueFull  # noqa: E402

KEY = "s3cret-key"
ORIGIN = "http://example.test"
PHOTO = sample_image_path().read_bytes()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A small random-weight model in the ferkit format, named ``test``."""
    cfg = load_config("r18_cbam", {"stem": "imagenet"})
    meta = ModelMeta.from_config(cfg, FER_CLASSES, name="test", training={"note": "x" * 5000})
    torch.manual_seed(0)
    model = build_model(meta).eval()
    path = tmp_path_factory.mktemp("model") / "test.safetensors"
    return save(model, meta, path, weights="fp32")


def wait_ready(client: TestClient, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(model_file):
    """The default settings over the test model."""
    with TestClient(create_app(ServeConfig(model=str(model_file), backend="torch"))) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def strict(model_file):
    """Tight limits, an API key and one CORS origin."""
    config = ServeConfig(model=str(model_file), backend="torch", api_key=KEY, cors=(ORIGIN,), max_upload_mb=0.05,
                         max_files=2, max_pixels=1_000_000, refusal_delay_s=0.0)  # the delay has its own test
    with TestClient(create_app(config), headers={"X-API-Key": KEY}) as c:
        wait_ready(c)
        yield c


def png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def assert_one_sentence(response: httpx.Response, status: int, *words: str) -> dict:
    """The answer has ``status`` and a JSON error: one sentence naming ``words``, no trace."""
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and "\n" not in body["error"] and body["error"].endswith(".")
    assert "Traceback" not in response.text and "File \"" not in response.text
    for word in words:
        assert word in body["error"], body["error"]
    return body


# -- endpoints -------------------------------------------------------------------------------------
def test_health_ready_and_model_metadata(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "test" and ready["batching"] is True
    client.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    after = client.get("/readyz").json()
    assert (after["model_calls"] - ready["model_calls"], after["images"] - ready["images"]) == (1, 1)
    meta = client.get("/v1/model").json()
    assert meta["name"] == "test" and meta["classes"] == list(FER_CLASSES) and meta["input_size"] == 48
    assert "training" not in meta


def test_predict_sample_photo_as_multipart(client):
    response = client.post("/v1/predict", files=[("files", ("astronaut.jpg", PHOTO, "image/jpeg"))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "test" and len(body["images"]) == 1
    image = body["images"][0]
    assert image["source"] == "astronaut.jpg" and image["status"] == "ok" and image["error"] is None
    assert (image["width"], image["height"]) == (512, 512) and len(image["faces"]) == 1
    face = image["faces"][0]
    x, y, w, h = face["box"]
    assert 140 <= x + w / 2 <= 260 and 60 <= y + h / 2 <= 180  # her face, not the suit
    # seven probabilities, each rounded to 4 decimals: their sum is 1 within 7 x 0.00005
    assert list(face["probs"]) == list(FER_CLASSES) and sum(face["probs"].values()) == pytest.approx(1, abs=3.5e-4)
    assert face["label"] == max(face["probs"], key=face["probs"].get)
    assert face["confidence"] == face["probs"][face["label"]]


def test_raw_body_and_several_files_keep_order(client):
    raw = client.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"}).json()["images"][0]
    blank = png(np.full((200, 300, 3), 128, np.uint8))
    photo_png = png(np.asarray(Image.open(io.BytesIO(PHOTO)).convert("RGB")))
    files = [("files", ("a.jpg", PHOTO, "image/jpeg")), ("files", ("blank.png", blank, "image/png")),
             ("files", ("a.png", photo_png, "image/png"))]
    images = client.post("/v1/predict", files=files).json()["images"]
    assert [i["source"] for i in images] == ["a.jpg", "blank.png", "a.png"]
    assert [i["status"] for i in images] == ["ok", "no_face", "ok"]
    assert raw["source"] == "<body>" and raw["faces"][0]["box"] == images[0]["faces"][0]["box"]
    assert raw["faces"][0]["probs"] == pytest.approx(images[0]["faces"][0]["probs"], abs=1e-6)
    assert (images[1]["width"], images[1]["height"]) == (300, 200)


def test_query_options_reach_the_model(client):
    whole = client.post("/v1/predict?detect=false", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    assert whole.json()["images"][0]["faces"][0]["box"] == [0, 0, 512, 512]
    # The detection copy is 320 px on its longer side: no face there is 400 px wide.
    huge = client.post("/v1/predict?min_face=400", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    assert huge.json()["images"][0]["status"] == "no_face"
    none = client.post("/v1/predict?tta=none", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    assert none.status_code == 200 and none.json()["images"][0]["faces"]


@pytest.mark.parametrize("query, words", [("tta=bogus", ("tta", "bogus", "flip")), ("min_face=0", ("min_face", ">= 1")),
                                          ("min_face=abc", ("min_face", "integer")), ("detect=maybe", ("detect",))])
def test_bad_query_options_are_422(client, query, words):
    response = client.post(f"/v1/predict?{query}", content=PHOTO, headers={"Content-Type": "image/jpeg"})
    assert_one_sentence(response, 422, *words)


def test_an_unreadable_image_costs_only_itself(client):
    # A well-formed request is answered 200 with a record per image: the good ones' faces, the bad ones' reasons.
    body = client.post("/v1/predict", content=b"hello, not an image", headers={"Content-Type": "image/jpeg"})
    assert body.status_code == 200
    (record,) = body.json()["images"]
    assert record["source"] == "<body>" and record["status"] == "error" and record["faces"] == []
    assert "not a readable image" in record["error"] and "0x" not in record["error"]
    truncated = client.post("/v1/predict", content=PHOTO[: len(PHOTO) // 2], headers={"Content-Type": "image/jpeg"})
    assert truncated.status_code == 200 and "truncated" in truncated.json()["images"][0]["error"]
    files = [("files", ("good.jpg", PHOTO, "image/jpeg")), ("files", ("bad.txt", b"\0\1junk", "text/plain")),
             ("files", ("also.jpg", PHOTO, "image/jpeg"))]
    mixed = client.post("/v1/predict", files=files)
    assert mixed.status_code == 200
    good, bad, also = mixed.json()["images"]
    assert [good["source"], bad["source"], also["source"]] == ["good.jpg", "bad.txt", "also.jpg"]  # as sent
    assert good["status"] == also["status"] == "ok" and len(good["faces"]) == 1 and good["width"] == 512
    assert bad["status"] == "error" and "not a readable image" in bad["error"] and bad["width"] is None


def test_a_refused_upload_is_answered_late_without_holding_up_other_clients(model_file):
    # Pixel bombs sent in a loop (16 flat 6300 x 6300 PNGs, 0.8 MB each request) were refused 130 times a
    # second and halved the honest clients' throughput with the parsing they cost.
    config = ServeConfig(model=str(model_file), backend="torch", max_files=1, refusal_delay_s=0.6)
    small = png(np.full((64, 64, 3), 90, np.uint8))
    refused = []
    with TestClient(create_app(config)) as c:
        wait_ready(c)
        start = time.monotonic()
        sender = threading.Thread(target=lambda: refused.append(
            (c.post("/v1/predict", files=[("f", ("a.png", small, "image/png"))] * 2), time.monotonic() - start)))
        sender.start()
        time.sleep(0.1)
        health = c.get("/healthz")
        health_at = time.monotonic() - start
        answer = c.post("/v1/predict", files=[("f", ("a.png", small, "image/png"))])
        sender.join(10)
    (response, refused_at), = refused
    assert response.status_code == 413 and "Too many images" in response.json()["error"]
    assert refused_at >= 0.6  # answered after the delay
    assert health.status_code == 200 and health_at < 0.5  # while another client was kept waiting
    assert answer.status_code == 200
    with pytest.raises(FerkitError, match="refusal_delay_s must be a finite number >= 0"):
        ServeConfig(refusal_delay_s=-1)


def test_empty_and_unsupported_requests(client):
    assert_one_sentence(client.post("/v1/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "No image")
    assert_one_sentence(client.post("/v1/predict", files={"note": (None, "no file")}), 400, "No image")
    assert_one_sentence(client.post("/v1/predict", json={"path": "/etc/passwd"}), 415, "application/json")
    assert_one_sentence(client.get("/v1/nothing"), 404)
    assert_one_sentence(client.get("/v1/predict"), 405)
    assert client.get("/healthz").status_code == 200  # still up after all of it


def test_upload_size_file_count_and_pixel_limits(strict):
    assert_one_sentence(strict.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"}), 413,
                        "50000 bytes")
    assert_one_sentence(strict.post("/v1/predict", files=[("f", ("a.jpg", PHOTO, "image/jpeg"))]), 413, "a.jpg",
                        "50000 bytes")
    small = png(np.full((64, 64, 3), 90, np.uint8))
    files = [("f", (f"{n}.png", small, "image/png")) for n in range(3)]
    assert_one_sentence(strict.post("/v1/predict", files=files), 413, "Too many images", "at most 2")
    bomb = png(np.zeros((1001, 1000, 3), np.uint8))  # a few KB that decode to 3 MB
    assert len(bomb) < 50_000
    assert_one_sentence(strict.post("/v1/predict", content=bomb, headers={"Content-Type": "image/png"}), 413,
                        "pixels", "1000 x 1001", "1000000")
    assert strict.post("/v1/predict", files=files[:2]).status_code == 200


def test_api_key_guards_the_api_but_not_health_or_page(strict):
    for headers in ({"X-API-Key": ""}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}):
        response = strict.get("/v1/model", headers=headers)
        assert_one_sentence(response, 401, "API key")
        assert response.headers["www-authenticate"] == "Bearer"
    bare = TestClient(strict.app)  # no key at all
    assert_one_sentence(bare.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"}), 401)
    assert bare.get("/healthz").status_code == 200 and bare.get("/readyz").status_code == 200
    assert bare.get("/").status_code == 200
    assert strict.get("/v1/model").status_code == 200
    assert bare.get("/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_cors_is_off_unless_origins_are_given(client, strict):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "x-api-key"}
    assert "access-control-allow-origin" not in client.options("/v1/predict", headers=preflight).headers
    assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": ORIGIN}).headers
    allowed = strict.options("/v1/predict", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = strict.options("/v1/predict", headers={**preflight, "Origin": "http://elsewhere.test"})
    assert "access-control-allow-origin" not in other.headers


def test_page_and_docs_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/app.js" in page.text
    for asset in ("/static/app.js", "/static/style.css", "/static/docs.js", "/docs"):
        response = client.get(asset)
        assert response.status_code == 200 and "http://" not in response.text and "https://" not in response.text
    assert "https://" not in page.text and "http://" not in page.text  # nothing fetched from elsewhere
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert client.get("/redoc").status_code == 404  # FastAPI's viewers load from a CDN: off


def test_openapi_publishes_the_one_result_schema(client):
    # A typed client can be generated: the 200 answer has a schema, and it is the schema every output uses.
    from ferkit.engine.schema import FaceRecord, ImageRecord

    spec = client.get("/openapi.json").json()
    answer = spec["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    schemas = spec["components"]["schemas"]
    assert answer["$ref"].endswith("/PredictResponse")
    assert set(schemas["ImageRecord"]["properties"]) == set(ImageRecord.__dataclass_fields__)
    assert set(schemas["FaceRecord"]["properties"]) == set(FaceRecord.__dataclass_fields__)
    assert schemas["ImageRecord"]["properties"]["status"]["enum"] == ["ok", "no_face", "error"]
    (record,) = client.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"}).json()["images"]
    assert list(record) == list(ImageRecord.__dataclass_fields__)
    assert list(record["faces"][0]) == list(FaceRecord.__dataclass_fields__)


# -- micro-batching ----------------------------------------------------------------------------------
class StubRecognizer:
    """Answers at once or when ``gate`` opens; records each call's size and options; fails on a 0-pixel image."""

    def __init__(self):
        self.classes, self.backend = ["a", "b"], "stub"
        self.meta = ModelMeta.from_dict({"model": "resnet18", "stem": "s2", "attention": "none", "reduction": 16,
                                         "in_chans": 1, "input_size": 48, "classes": self.classes, "mean": 0.5,
                                         "std": 0.25, "name": "stub"}, "stub")
        self.detect, self.tta, self.min_face = True, "flip", 24
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.calls: list[tuple[int, bool, str, int]] = []

    def __call__(self, images, keep_images=True, detect=None, tta=None, min_face=None):
        self.entered.set()
        assert self.gate.wait(30)
        self.calls.append((len(images), self.detect if detect is None else detect, tta or self.tta,
                           min_face or self.min_face))
        if any(getattr(image, "size", 1) == 0 for image in images):
            raise RuntimeError("secret internals at /opt/model")
        return [Result(str(int(image.flat[0])) if isinstance(image, np.ndarray) else "warm-up",
                       faces=[FaceResult((0, 0, 1, 1), {"a": 0.75, "b": 0.25})]) for image in images]


def tagged(*tags: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), tag, np.uint8) for tag in tags]


@pytest.mark.parametrize("batching", [True, False])
def test_batcher_gathers_waiting_requests_into_one_call(batching):
    stub = StubRecognizer()
    batcher = MicroBatcher(lambda: stub, batching=batching, max_batch=32, max_wait_s=0.05)
    batcher.start()
    assert batcher.ready.wait(10)
    stub.gate.clear()
    first = batcher.submit(tagged(1), PredictOptions())
    assert stub.entered.wait(10)  # the worker is inside the first call: the next jobs wait together
    same = PredictOptions()
    waiting = [batcher.submit(tagged(2), same), batcher.submit(tagged(3, 4), same), batcher.submit(tagged(5), same),
               batcher.submit(tagged(6), PredictOptions(detect=False, tta="none", min_face=40))]
    stub.gate.set()
    answers = [f.result(10) for f in [first, *waiting]]
    assert [[r.source for r in a] for a in answers] == [["1"], ["2"], ["3", "4"], ["5"], ["6"]]
    if batching:
        assert stub.calls == [(1, True, "flip", 24), (4, True, "flip", 24), (1, False, "none", 40)]
    else:
        assert [c[0] for c in stub.calls] == [1, 1, 2, 1, 1]
    assert (batcher.model_calls, batcher.images_done) == (len(stub.calls), 6)
    batcher.close()


def test_batcher_waits_for_company_only_when_idle():
    stub = StubRecognizer()
    batcher = MicroBatcher(lambda: stub, max_wait_s=0.3)
    batcher.start()
    assert batcher.ready.wait(10)
    start = time.monotonic()
    first = batcher.submit(tagged(1), PredictOptions())
    time.sleep(0.05)
    second = batcher.submit(tagged(2), PredictOptions())  # within the first one's 0.3 s: the same call
    assert first.result(10)[0].source == "1" and second.result(10)[0].source == "2"
    assert 0.25 < time.monotonic() - start and [c[0] for c in stub.calls] == [2]
    batcher.close()


def test_batcher_refuses_past_its_queue_and_survives_a_failed_call():
    stub = StubRecognizer()
    batcher = MicroBatcher(lambda: stub, max_wait_s=0.0, queue_size=2)
    batcher.start()
    assert batcher.ready.wait(10)
    stub.gate.clear()
    running = batcher.submit(tagged(1), PredictOptions())
    assert stub.entered.wait(10)
    queued = [batcher.submit(tagged(2), PredictOptions()), batcher.submit([np.zeros((0, 0, 3), np.uint8)],
                                                                          PredictOptions(detect=False))]
    with pytest.raises(QueueFull):
        batcher.submit(tagged(3), PredictOptions())
    stub.gate.set()
    assert running.result(10)[0].source == "1" and queued[0].result(10)[0].source == "2"
    with pytest.raises(RuntimeError, match="secret"):
        queued[1].result(10)
    assert batcher.submit(tagged(4), PredictOptions()).result(10)[0].source == "4"  # the worker lives on
    batcher.close()


def test_busy_server_answers_504_then_503_with_retry_after():
    stub = StubRecognizer()
    app = create_app(ServeConfig(queue_size=2, predict_timeout_s=0.5, max_wait_ms=0), load=lambda: stub)
    with TestClient(app) as client:
        wait_ready(client)
        stub.gate.clear()
        app.state.batcher.submit(tagged(1), PredictOptions())
        assert stub.entered.wait(10)
        slow = client.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert_one_sentence(slow, 504, "did not answer within 0.5 s")
        app.state.batcher.submit(tagged(2), PredictOptions())  # the queue: the timed-out request's job + this
        busy = client.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert_one_sentence(busy, 503, "busy")
        assert busy.headers["retry-after"] == "1"
        stub.gate.set()
        time.sleep(0.2)
        ok = client.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert ok.status_code == 200 and ok.json()["model"] == "stub"


def test_a_model_that_failed_to_load_is_reported_on_readyz():
    stub = StubRecognizer()
    app = create_app(ServeConfig(), load=lambda: stub)
    with TestClient(app) as client:
        wait_ready(client)
        response = client.post("/v1/predict?detect=false", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200
        app.state.batcher.recognizer = None  # as after a failed load: requests fail, the server stays up
        app.state.batcher.load_error = "model file damaged"
        assert_one_sentence(client.get("/readyz"), 503, "model file damaged")


def test_model_exception_becomes_500_without_its_message(monkeypatch):
    stub = StubRecognizer()
    app = create_app(ServeConfig(), load=lambda: stub)
    monkeypatch.setattr("ferkit.serve.app.decode_upload", lambda data, name, limit: np.zeros((0, 0, 3), np.uint8))
    with TestClient(app) as client:
        wait_ready(client)
        response = client.post("/v1/predict", content=PHOTO, headers={"Content-Type": "image/jpeg"})
        body = assert_one_sentence(response, 500, "log")
        assert "secret" not in response.text and "/opt" not in body["error"]
        assert client.get("/healthz").status_code == 200


def test_slow_and_endless_uploads_are_cut_off():
    app = create_app(ServeConfig(upload_timeout_s=0.3, max_upload_mb=0.01), load=StubRecognizer)

    async def send(chunks, pause):
        async def body():
            for chunk in chunks:
                await asyncio.sleep(pause)
                yield chunk

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return await c.post("/v1/predict", content=body(), headers={"Content-Type": "image/jpeg"})

    slow = asyncio.run(send([b"x" * 10] * 20, 0.05))  # a trickle: 1 s for 200 bytes
    assert_one_sentence(slow, 408, "0.3 s")
    endless = asyncio.run(send([b"x" * 4096] * 10, 0.0))  # no Content-Length, 40 KB of a 10 KB limit
    assert_one_sentence(endless, 413, "10000 bytes")


def test_settings_are_checked():
    from ferkit.errors import FerkitError

    for bad in ({"port": 70000}, {"max_files": 0}, {"max_upload_mb": 0}, {"api_key": " "}, {"max_wait_ms": -1}):
        with pytest.raises(FerkitError):
            ServeConfig(**bad)
    config = ServeConfig(api_key="k", cors=("http://a",))
    assert ServeConfig.from_json(config.to_json()) == ServeConfig(cors=("http://a",))  # the key stays out


# -- the command, as a user runs it ------------------------------------------------------------------
def test_serve_options_reach_the_server_settings(monkeypatch, tmp_path, capsys):
    from ferkit.cli import main

    seen = []
    monkeypatch.setattr("ferkit.serve.app.run_server", seen.append)
    monkeypatch.setenv("FERKIT_API_KEY", "from-env")
    assert main(["serve", "--port", "9001", "--cors", "http://a.test", "http://b.test", "--no-batching",
                 "--max-files", "3", "--workers", "2"]) == 0
    key_file = tmp_path / "key"
    key_file.write_text("  from-file \n")
    assert main(["serve", "--api-key-file", str(key_file)]) == 0
    first, second = seen
    assert (first.host, first.port, first.cors, first.batching, first.max_files, first.workers) == (
        "127.0.0.1", 9001, ("http://a.test", "http://b.test"), False, 3, 2)
    assert first.api_key == "from-env" and second.api_key == "from-file" and second.port == 8000 and second.cors == ()
    assert "from-file" not in repr(second)
    # A key on the command line is in the process list for every local user to read: refused, with the remedy.
    capsys.readouterr()
    assert main(["serve", "--api-key", "given"]) == 2
    err = capsys.readouterr().err
    assert "readable by every user" in err and "FERKIT_API_KEY" in err and "--api-key-file" in err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["serve", "--api-key-file", str(empty)]) == 2 and "holds no key" in capsys.readouterr().err
    assert len(seen) == 2


@pytest.mark.parametrize("key", ["clé-secrète", "two words", "tab\there"])
def test_a_key_no_client_could_send_is_refused_at_start(key):
    from ferkit.errors import FerkitError

    with pytest.raises(FerkitError, match="visible ASCII"):
        ServeConfig(api_key=key)


def test_serve_refuses_a_missing_model_before_listening(tmp_path, capsys):
    from ferkit.cli import main

    for workers in ("1", "2"):
        assert main(["serve", "--model", str(tmp_path / "none.safetensors"), "--port", "0", "--workers", workers]) == 2
        assert capsys.readouterr().err.strip().endswith("none.safetensors: no such model file")
    assert main(["serve", "--model", "nosuchname", "--port", "0"]) == 2
    assert "no shipped model called 'nosuchname'" in capsys.readouterr().err


def test_serve_without_the_extra_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from ferkit.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", "--port", "0"]) == 2
    assert capsys.readouterr().err.strip() == 'ferkit: error: ferkit serve needs uvicorn: pip install "ferkit[serve]"'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def multipart_body(name: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``ferkit serve`` with the shipped model in a subprocess on a free loopback port."""
    port = free_port()
    script = Path(sys.executable).with_name("ferkit")  # the console script of this environment
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "ferkit"]
    command += ["serve", "--port", str(port), "--upload-timeout", "1", "--header-timeout", "1"]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "FERKIT_API_KEY": ""})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if http("GET", f"{url}/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.25)
        yield url, log
    finally:
        process.terminate()
        process.wait(30)


def test_ferkit_serve_answers_on_loopback(server):
    url, log = server
    assert "127.0.0.1" in log.read_text()  # loopback only by default
    status, meta = http("GET", f"{url}/v1/model")
    assert status == 200 and meta["classes"] == list(FER_CLASSES) and meta["name"] == "default"
    body, content_type = multipart_body("astronaut.jpg", PHOTO, "image/jpeg")
    status, answer = http("POST", f"{url}/v1/predict", body, {"Content-Type": content_type})
    assert status == 200 and answer["model"] == "default"
    (image,) = answer["images"]
    assert image["status"] == "ok" and len(image["faces"]) == 1 and image["faces"][0]["label"] == "happy"
    status, broken = http("POST", f"{url}/v1/predict", b"\xff\xd8\xff broken", {"Content-Type": "image/jpeg"})
    assert status == 200 and broken["images"][0]["status"] == "error"
    assert "not a readable image" in broken["images"][0]["error"]
    assert http("GET", f"{url}/healthz") == (200, {"status": "ok"})


def test_ferkit_serve_cuts_off_a_slow_upload(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
                  + PHOTO[:100])
        start = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert 0.5 < time.monotonic() - start < 8
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408") and "longer than 1 s" in json.loads(body)["error"]
    assert http("GET", f"{url}/healthz") == (200, {"status": "ok"})


def test_idle_sockets_do_not_starve_new_clients(server):
    # 270 connections opened and left silent made every new client, health checks included, get 503.
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(300)]
    try:
        assert http("GET", f"{url}/healthz") == (200, {"status": "ok"})
        assert http("GET", f"{url}/v1/model")[0] == 200
    finally:
        for s in idle:
            s.close()


def test_a_request_head_sent_a_line_a_second_is_cut_off(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer = b""
        for i in range(20):  # one header line every 0.25 s: each arrives well within any per-read timeout
            try:
                s.sendall(f"X-Drip-{i}: {i}\r\n".encode())
            except OSError:
                break
            time.sleep(0.25)
        s.settimeout(5)
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except OSError:
            pass
    elapsed = time.monotonic() - start
    assert elapsed < 4.5  # cut at the 1 s head deadline (plus the last sleep), not after all 20 lines
    if answer:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and "request head took longer than 1 s" in json.loads(body)["error"]


def test_an_oversized_request_head_gets_a_json_error(server):
    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except OSError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert "at most 64 KB" in json.loads(body)["error"]
    assert http("GET", f"{url}/healthz") == (200, {"status": "ok"})


def test_page_shows_the_expression_in_headless_chromium(server, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium found (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # The fake camera (a test pattern) stands in for a webcam, its permission granted without a prompt.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,760",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(flag)
    driver_path = shutil.which("chromedriver")
    service = webdriver.ChromeService(executable_path=driver_path) if driver_path else webdriver.ChromeService()
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: "expressions" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(sample_image_path()))
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#faces .face"))
        faces = driver.find_elements(By.CSS_SELECTOR, "#faces .face")
        assert len(faces) == 1 and faces[0].get_attribute("data-label") == "happy"
        bars = faces[0].find_elements(By.CSS_SELECTOR, ".bar")
        assert [b.get_attribute("data-expression") for b in bars] == list(FER_CLASSES)
        assert "1 face found" in driver.find_element(By.ID, "status").text
        assert not driver.find_element(By.ID, "key-row").is_displayed()  # no key asked for: none is set
        # The box is drawn: green pixels on the canvas, where the photo has none that pure.
        green = driver.execute_script(
            "const c = document.getElementById('view'); const d = c.getContext('2d')"
            ".getImageData(0, 0, c.width, c.height).data; let n = 0;"
            "for (let i = 0; i < d.length; i += 4)"
            "  if (d[i] < 10 && d[i + 1] > 210 && d[i + 2] > 80 && d[i + 2] < 100) n++;"
            "return n;")
        assert green > 500
        shot = tmp_path / "serve.png"
        driver.save_screenshot(str(shot))
        assert Image.open(shot).size[0] > 0
        if os.environ.get("FERKIT_SERVE_SCREENSHOT"):  # the README's picture: FERKIT_SERVE_SCREENSHOT=docs/serve.png
            dest = Path(os.environ["FERKIT_SERVE_SCREENSHOT"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.open(shot).convert("RGB").quantize(256).save(dest, optimize=True)  # a third of the bytes

        # Several photos and a short video at once: a line per image or frame, and the results to download in
        # the one schema (the CSV's columns are the library's own).
        from ferkit.engine.schema import ImageRecord, csv_header

        blank = tmp_path / "blank.png"
        Image.new("RGB", (200, 150), (90, 90, 90)).save(blank)
        clip = tmp_path / "clip.webm"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"VP80"), 5, (320, 240))
        face = cv2.resize(cv2.imread(str(sample_image_path())), (240, 240))
        for _ in range(10):  # 2 s: read at 0, 0.5, 1 and 1.5 s
            frame = np.full((240, 320, 3), 90, np.uint8)
            frame[:, 40:280] = face
            writer.write(frame)
        writer.release()
        driver.execute_script("document.getElementById('file').value = ''")  # else the first photo stays picked
        driver.find_element(By.ID, "file").send_keys("\n".join(map(str, (sample_image_path(), blank, clip))))
        WebDriverWait(driver, 90).until(lambda d: "6 images and frames read" in d.find_element(By.ID, "status").text)
        lines = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results .result")]
        assert len(lines) == 6 and lines[0].startswith("astronaut.jpg: 1 face, happy") and lines[1] == "blank.png: no face"
        assert [line.split(":")[0] for line in lines[2:]] == [f"clip.webm at {t:.1f} s" for t in (0, 0.5, 1, 1.5)]
        fetch = ("const done = arguments[arguments.length - 1];"
                 "fetch(document.getElementById(arguments[0]).href).then(r => r.text()).then(done);")
        records = [json.loads(line) for line in driver.execute_async_script(fetch, "download-json").splitlines()]
        assert [list(r) for r in records] == [list(ImageRecord.__dataclass_fields__)] * 6
        assert [r["time_s"] for r in records] == [None, None, 0, 0.5, 1, 1.5]
        frames = records[2:]  # real frames of the clip, each read by the model (its face in most of them)
        assert all((r["status"], r["width"], r["height"]) in {("ok", 320, 240), ("no_face", 320, 240)} for r in frames)
        assert sum(len(r["faces"]) == 1 for r in frames) >= 3, [(r["status"], len(r["faces"])) for r in frames]
        table = list(csv.reader(io.StringIO(driver.execute_async_script(fetch, "download-csv"))))
        assert table[0] == csv_header(list(FER_CLASSES)) and len(table) == 1 + 6

        # The webcam: frames go to the server a few times a second and each answer is drawn.
        driver.find_element(By.ID, "camera").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "camera").text == "Stop webcam")
        WebDriverWait(driver, 30).until(lambda d: re.fullmatch(r"no face found|\d+ faces? found",
                                                               d.find_element(By.ID, "status").text)
                                        and d.execute_script("return document.getElementById('view').width") == 640)
        driver.find_element(By.ID, "camera").click()
        assert driver.find_element(By.ID, "camera").text == "Start webcam"

        driver.get(f"{url}/docs")
        WebDriverWait(driver, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".endpoint")) >= 4)
        assert "POST /v1/predict" in driver.find_element(By.ID, "endpoints").text
    finally:
        driver.quit()


def test_a_request_over_the_pixel_budget_is_refused_before_decoding(monkeypatch):
    # 16 flat 6300 x 6300 PNGs (0.8 MB sent) took the server from 0.7 to 2.8 GB: all were decoded on arrival.
    decoded = []
    monkeypatch.setattr("ferkit.serve.app.decode_image", lambda data, name: decoded.append(name))
    flat = png(np.zeros((1000, 1000), np.uint8))  # 1 MP each, a few KB
    app = create_app(ServeConfig(max_pixels=1_000_000, pixel_budget=3_000_000), load=lambda: StubRecognizer())
    with TestClient(app) as client:
        wait_ready(client)
        files = [("files", (f"flat{i}.png", flat, "image/png")) for i in range(4)]
        body = assert_one_sentence(client.post("/v1/predict", files=files), 413, "4000000 pixels", "3000000")
        assert decoded == [] and "images" not in body


def test_requests_wait_for_their_share_of_the_pixel_budget():
    from ferkit.serve.app import PixelBudget
    from ferkit.serve.batcher import QueueFull

    async def scenario() -> list[str]:
        budget, order = PixelBudget(100), []

        async def request(name: str, pixels: int, hold_s: float) -> None:
            async with budget.hold(pixels, timeout=5):
                order.append(f"{name} in ({budget.held})")
                await asyncio.sleep(hold_s)
            order.append(f"{name} out")

        await asyncio.gather(request("a", 60, 0.2), request("b", 60, 0.0), request("c", 40, 0.0))
        assert budget.held == 0
        async with budget.hold(100, timeout=5):
            with pytest.raises(QueueFull):  # waited its timeout for pixels that stay held: busy
                async with budget.hold(1, timeout=0.05):
                    pass
        return order

    order = asyncio.run(scenario())
    # a and c fit together (100); b waits until a has let go of its 60.
    assert order.index("b in (60)") > order.index("a out")
    assert order[:2] == ["a in (60)", "c in (100)"]


def test_pixel_budget_below_one_image_is_refused():
    from ferkit.errors import FerkitError

    with pytest.raises(FerkitError, match="pixel_budget .* must be at least max_pixels"):
        ServeConfig(max_pixels=1000, pixel_budget=999)
