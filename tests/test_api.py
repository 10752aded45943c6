"""The HTTP API (#14): the prediction server of a run and the automation API with tokens.

Real servers (uvicorn on a free port, in a thread, or `visionboard serve-model` in a process
of its own) and a real HTTP client (urllib): predictions equal `visionboard predict`'s, every
bad request gets its 4xx with a message and the server keeps serving, a full queue answers
503 with Retry-After, and tokens act as their users under the store's rules.
"""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from factories import ADMIN, write_digits_imagefolder
from PIL import Image
from test_predict import make_run, write_images, write_photo

from engine import cli, passwords, sign_in, store
from engine.api.automation import create_api_app
from engine.api.batcher import Batcher, QueueFull
from engine.api.inputs import ApiError, Limits, decode_image
from engine.api.serving import ModelServer, create_model_app
from engine.predict import load_predictor, predict_files

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse"
TEAM = {"root": "admin", "ada": "member", "bo": "member", "vic": "viewer"}
LIMITS = Limits(max_images=4, max_file_bytes=100_000, max_pixels=300_000, max_queue=8)


# -- a real server and a real client ---------------------------------------------------------


def serve(app):
    """Serve `app` with uvicorn in a thread on a free port: (base URL, stop)."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)

    def stop():
        server.should_exit = True
        thread.join(30)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def multipart(files, fields=None):
    """(body, content type) of a multipart/form-data request: files [(name, bytes)]."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for key, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
        out.write(f"{value}\r\n".encode())
    for name, data in files:
        out.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def call(url, method="GET", token=None, json_body=None, files=None, fields=None, raw=None,
         content_type=None):  # fmt: skip
    """(status, headers, JSON body) of one request."""
    data, kind = raw, content_type
    if json_body is not None:
        data, kind = json.dumps(json_body).encode(), "application/json"
    elif files is not None:
        data, kind = multipart(files, fields)
    req = urllib.request.Request(url, data=data, method=method)
    if kind:
        req.add_header("Content-Type", kind)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """The automation API over a data directory with a classification run, a detection run
    and a team (an admin, two members, a viewer), each with a token."""
    home = tmp_path_factory.mktemp("api") / "home"
    home.mkdir()
    runs = {"cls": make_run(home), "det": make_run(home, task="detection")}
    images = write_images(home.parent / "images")
    db = store.connect(home)
    tokens = {}
    for name, role in TEAM.items():
        store.add_user(db, name, role, PASSWORD, by=ADMIN)
        tokens[name] = store.add_api_token(db, name, "tests", by=ADMIN)[0]
    data = write_digits_imagefolder(home.parent / "data" / "tiny", per_class=3, classes=range(2))
    url, stop = serve(create_api_app(home, limits=LIMITS))
    yield {"url": url, "home": home, "db": db, "tokens": tokens, "images": images,
           "data": data, **runs}  # fmt: skip
    stop()
    db.conn.close()


# -- predictions ---------------------------------------------------------------------------------


def test_predictions_equal_the_clis_for_files_and_base64(api, tmp_path, capsys):
    url, home = api["url"], api["home"]
    images = [*api["images"][:3], write_photo(tmp_path / "photo.jpg", 600, 480)]  # drafted
    token = api["tokens"]["vic"]  # predicting is reading: a viewer may
    out = tmp_path / "cli.jsonl"
    args = ["--home", str(home), "predict", str(api["cls"]), *map(str, images), "--out", str(out)]
    assert cli.main(args) == 0
    expected = [json.loads(line) for line in out.read_text().splitlines()]

    files = [(p.name, p.read_bytes()) for p in images]
    status, _, got = call(f"{url}/api/runs/{api['cls']}/predict", "POST", token, files=files,
                          fields={"top_k": 3})  # fmt: skip
    assert status == 200, got
    assert got["run"] == api["cls"] and got["task"] == "classification"
    for mine, cli_row, path in zip(got["predictions"], expected, images):
        assert mine["image"] == path.name
        assert mine["label"] == cli_row["label"]
        assert mine["score"] == pytest.approx(cli_row["score"], abs=2e-6)
        top = {t["label"]: t["score"] for t in mine["top"]}
        assert top == pytest.approx(cli_row["probs"], abs=2e-6)  # 3 classes: every class
        scores = [t["score"] for t in mine["top"]]
        assert scores == sorted(scores, reverse=True) and mine["top"][0]["label"] == mine["label"]
    assert len({p["label"] for p in got["predictions"]}) > 1, "predictions should differ"

    body = {
        "images": [{"name": p.name, "data": b64(p.read_bytes())} for p in images[:2]]
        + ["data:image/png;base64," + base64.encodebytes(images[2].read_bytes()).decode()],
        "top_k": 1,
    }  # fmt: skip  (the last in lines of 76, as `base64 FILE` writes it)
    status, _, again = call(f"{url}/api/runs/{api['cls']}/predict", "POST", token, body)
    assert status == 200, again
    assert [p["image"] for p in again["predictions"]] == [images[0].name, images[1].name, "image 3"]
    for mine, first in zip(again["predictions"], got["predictions"]):
        assert len(mine["top"]) == 1
        assert (mine["label"], mine["score"]) == (first["label"], pytest.approx(first["score"]))


def test_detection_boxes_equal_the_clis_at_the_runs_threshold_or_the_requests(api, tmp_path):
    url, home, run_id = api["url"], api["home"], api["det"]
    image = api["images"][2]
    for threshold in (None, 0.9):
        out = tmp_path / f"cli-{threshold}.jsonl"
        predict_files(run_id, [image], out=out, batch_size=1, home=home, progress=False,
                      threshold=threshold)  # fmt: skip
        expected = json.loads(out.read_text())
        body = {"images": [b64(image.read_bytes())]}
        if threshold is not None:
            body["threshold"] = threshold
        status, _, got = call(f"{url}/api/runs/{run_id}/predict", "POST", api["tokens"]["ada"],
                              body)  # fmt: skip
        assert status == 200, got
        assert got["threshold"] == (0.3 if threshold is None else threshold)  # the card's 0.3
        boxes = got["predictions"][0]["boxes"]
        assert len(boxes) == len(expected["boxes"]) > 0
        for box, cli_box, score, label in zip(
            boxes, expected["boxes"], expected["scores"], expected["labels"]
        ):
            assert box["label"] == label
            assert box["score"] == pytest.approx(score, abs=2e-6)
            assert box["score"] >= got["threshold"]
            assert box["box"] == pytest.approx(cli_box, abs=0.006)  # the CLI rounds to 0.01


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decode_refuses_pillows_decompression_bombs_warning_and_error(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert decode_image("ok.png", png(90, 100), 10**9).size == (90, 100)
    for size in ((120, 100), (300, 300)):  # above the limit (Pillow warns), above twice (error)
        with pytest.raises(ApiError) as refused:
            decode_image("bomb.png", png(*size), 10**9)
        assert refused.value.status == 413 and "decompression bomb" in refused.value.message


def test_every_bad_request_gets_its_4xx_with_a_message_and_the_server_keeps_serving(api):
    url, images, token = api["url"], api["images"], api["tokens"]["ada"]
    folder = images[1].parent
    good = images[1].read_bytes()
    queued = store.create_run(api["db"], {"task": "classification", "dataset": "d"}, by=ADMIN)
    cls, det = f"{url}/api/runs/{api['cls']}/predict", f"{url}/api/runs/{api['det']}/predict"
    cases = [
        (cls, {"files": [("notes.txt", (folder / "notes.txt").read_bytes())]}, 422,
         "image 'notes.txt': cannot read image"),
        (cls, {"files": [("img.png", good), ("broken.png", (folder / "broken.png").read_bytes())]},
         422, "image 'broken.png': cannot read image"),
        (cls, {"files": [("big.png", os.urandom(100_001))]}, 413,
         "image 'big.png' is 100001 bytes: over the limit of 100000 bytes"),
        (cls, {"files": [("bomb.png", png(600, 600))]}, 413,
         "image 'bomb.png' refused as a decompression bomb: 600x600 px, over the limit of "
         "300000 pixels"),
        (cls, {"files": [("img.png", good)] * 5}, 413, "too many images in one request: at most 4"),
        (cls, {"json_body": {"images": [b64(good)] * 5}}, 413, "5 images in one request: at most 4"),
        (cls, {"raw": b'{"images": [', "content_type": "application/json"}, 400,
         "the request body is not valid JSON"),
        (cls, {"json_body": {"pictures": []}}, 422, 'an object with "images"'),
        (cls, {"json_body": {"images": ["not base64!"]}}, 422, "image 'image 1' is not valid base64"),
        (cls, {"json_body": {"images": []}}, 422, "no image in the request"),
        (cls, {"raw": b"hello", "content_type": "text/plain"}, 415, "content type 'text/plain'"),
        (f"{url}/api/runs/999/predict", {"json_body": {"images": [b64(good)]}}, 404,
         "run 999 not found"),
        (f"{url}/api/runs/{queued}/predict", {"json_body": {"images": [b64(good)]}}, 409,
         f"run {queued} (queued) has no trained model"),
        (det, {"json_body": {"images": [b64(good)], "threshold": 1.5}}, 422,
         "threshold 1.5: expected a number from 0 to 1"),
        (det, {"files": [("img.png", good)], "fields": {"threshold": "high"}}, 422,
         "threshold 'high': expected a number from 0 to 1"),
        (cls, {"json_body": {"images": [b64(good)], "threshold": 0.5}}, 422,
         "is a classifier; threshold is for detection runs"),
        (cls, {"json_body": {"images": [b64(good)], "top_k": 4}}, 422,
         "top_k 4: expected a whole number from 1 to 3"),
        (det, {"json_body": {"images": [b64(good)], "top_k": 1}}, 422, "is a detector"),
        (cls, {"json_body": {"images": [b64(good)], "top_k": True}}, 422,
         "top_k True: expected a whole number from 1 to 3"),
        (det, {"json_body": {"images": [b64(good)], "threshold": True}}, 422,
         "threshold True: expected a number from 0 to 1"),
        (cls, {"json_body": {"images": [b64(good)], "size": 3}}, 422,
         "unknown field(s) size: the fields are threshold and top_k"),
    ]  # fmt: skip
    for where, request, status, message in cases:
        got_status, _, body = call(where, "POST", token, **request)
        assert (got_status, message) == (status, message) and message in body["detail"], body
    status, _, body = call(cls, "POST", token, files=[("img.png", good)])
    assert status == 200 and body["predictions"][0]["label"]  # still serving


def test_a_body_over_the_limit_is_refused_before_it_is_read(api):
    """A declared length over the limit is answered before a byte of the body is sent; a
    chunked body (no length) as soon as it passes the limit, its end never sent: a server
    that waited for the whole body would time out here."""
    import http.client

    host, port = api["url"].removeprefix("http://").split(":")
    path = f"/api/runs/{api['cls']}/predict"
    for chunked in (False, True):
        conn = http.client.HTTPConnection(host, int(port), timeout=20)
        conn.putrequest("POST", path)
        conn.putheader("Authorization", f"Bearer {api['tokens']['ada']}")
        conn.putheader("Content-Type", "application/json")
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        else:
            conn.putheader("Content-Length", str(LIMITS.max_body_bytes + 1))
        conn.endheaders()
        if chunked:
            chunk = b"x" * 65536
            for _ in range(LIMITS.max_body_bytes // len(chunk) + 1):
                conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = conn.getresponse()
        body = json.loads(response.read())
        assert response.status == 413 and "is over the limit of" in body["detail"], body
        conn.close()
    assert call(f"{api['url']}/api/health")[0] == 200


# -- the prediction server: serve-model, batching, the bounded queue ----------------------------


def test_batcher_predicts_concurrent_jobs_together_per_key_and_bounds_its_queue():
    calls = []

    def predict(items, key):
        calls.append((list(items), key))
        time.sleep(0.05)
        return [(item * 10, key) for item in items]

    batcher = Batcher(predict, max_batch=8, max_wait=0.2, max_queue=12)
    futures = [batcher.submit([k], key="a" if k % 2 else "b") for k in range(6)]
    futures.append(batcher.submit([6, 7], key="a"))
    assert [f.result(10) for f in futures] == [
        [(0, "b")], [(10, "a")], [(20, "b")], [(30, "a")], [(40, "b")], [(50, "a")],
        [(60, "a"), (70, "a")],
    ]  # fmt: skip
    # all arrived within max_wait: one batch, predicted once per key
    assert sorted(calls, key=lambda c: c[1]) == [([1, 3, 5, 6, 7], "a"), ([0, 2, 4], "b")]
    assert batcher.stats()["batches"] == 1 and batcher.stats()["images"] == 8

    slow = Batcher(predict, max_batch=1, max_wait=0, max_queue=2)
    first = slow.submit([1])
    time.sleep(0.02)  # taken: the queue is empty again
    waiting = [slow.submit([2]), slow.submit([3])]
    with pytest.raises(QueueFull) as full:
        slow.submit([4])
    assert full.value.retry_after >= 1 and "queue is full (2 image(s) waiting, at most 2)" in str(
        full.value
    )
    slow.close()  # answers what waits, then stops
    assert [f.result(0) for f in (first, *waiting)] == [[(10, None)], [(20, None)], [(30, None)]]


def test_batcher_outlives_a_cancelled_request_and_a_failing_one_fails_alone():
    gate = threading.Event()

    def predict(items, key):
        gate.wait(10)
        if "bad" in items:
            raise ValueError("cannot predict 'bad'")
        return [item.upper() for item in items]

    batcher = Batcher(predict, max_batch=8, max_wait=0, max_queue=8)
    try:
        first = batcher.submit(["a"])  # taken at once, predicting until the gate opens
        time.sleep(0.05)
        gone, kept = batcher.submit(["b"]), batcher.submit(["c"])  # one batch, next
        assert gone.cancel()  # its caller gave up (a client gone, a timeout)
        gate.set()
        assert (first.result(10), kept.result(10)) == (["A"], ["C"])
        gate.clear()
        blocker = batcher.submit(["g"])
        time.sleep(0.05)
        together = [batcher.submit(["d"]), batcher.submit(["bad"]), batcher.submit(["e", "f"])]
        gate.set()
        assert blocker.result(10) == ["G"]
        assert together[0].result(10) == ["D"] and together[2].result(10) == ["E", "F"]
        with pytest.raises(ValueError, match="cannot predict 'bad'"):
            together[1].result(10)
        assert batcher.submit(["h"]).result(10) == ["H"]  # the thread still serves
    finally:
        gate.set()
        batcher.close()


def test_batcher_counts_the_room_reserved_for_images_being_decoded_as_taken():
    batcher = Batcher(lambda items, key: [item * 2 for item in items], max_queue=3)
    try:
        batcher.reserve(2)  # two requests' images being decoded at once: 1 + 1
        batcher.reserve(1)
        with pytest.raises(QueueFull, match="3 image\\(s\\) waiting, at most 3"):
            batcher.reserve(1)  # a third request is refused before it decodes anything
        with pytest.raises(QueueFull):
            batcher.submit([9])
        batcher.release(1)  # that one's images were no image after all
        futures = [batcher.submit([1, 2], reserved=True)]  # never refused: its room is held
        futures.append(batcher.submit([3]))  # the room given back
        assert [f.result(10) for f in futures] == [[2, 4], [6]]
        assert batcher.stats()["reserved_images"] == 0
    finally:
        batcher.close()


def test_serve_model_app_answers_503_with_retry_after_when_its_queue_is_full(api):
    predictor = load_predictor(api["cls"], home=api["home"], device="cpu")
    limits = Limits(max_images=1, max_batch=1, max_wait_ms=0, max_queue=1)
    url, stop = serve(create_model_app(ModelServer(predictor, limits)))
    try:
        assert call(f"{url}/health")[2]["run"] == api["cls"]
        assert call(f"{url}/model")[2]["classes"] == predictor.classes
        big = Image.open(api["images"][3]).resize((400, 400))  # slower to predict
        buffer = io.BytesIO()
        big.save(buffer, "PNG")
        body = {"images": [b64(buffer.getvalue())]}
        answers = []
        for _ in range(3):  # bursts until one overflows the queue of one image
            with ThreadPoolExecutor(16) as pool:
                answers += pool.map(lambda _: call(f"{url}/predict", "POST", json_body=body),
                                    range(16))  # fmt: skip
            if any(status == 503 for status, _, _ in answers):
                break
        statuses = {status for status, _, _ in answers}
        assert statuses == {200, 503}, answers[:1]
        refused = next(a for a in answers if a[0] == 503)
        assert int(refused[1]["Retry-After"]) >= 1
        assert "the prediction queue is full" in refused[2]["detail"]
        assert call(f"{url}/predict", "POST", json_body=body)[0] == 200  # and it goes on
    finally:
        stop()


class GatedPredictor:
    """A classifier's Predictor stand-in whose predict waits for `gate`: a busy model."""

    run_id, task, classes, device, default_threshold, card = 7, "classification", ["a", "b"], "cpu", None, {}  # fmt: skip

    def __init__(self):
        self.gate = threading.Event()

    def read(self, source):
        from engine.data import read_image

        return read_image(source)

    def predict(self, images, threshold=None):
        self.gate.wait(30)
        return [{"label": "a", "score": 0.6, "probs": {"a": 0.6, "b": 0.4}} for _ in images]


def test_a_full_server_answers_503_before_decoding_the_images(api):
    predictor = GatedPredictor()
    limits = Limits(max_images=1, max_batch=1, max_wait_ms=0, max_queue=1)
    url, stop = serve(create_model_app(ModelServer(predictor, limits)))
    image = {"json_body": {"images": [b64(png(8, 8))]}}
    try:
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(call, f"{url}/predict", "POST", **image)]  # being predicted
            time.sleep(0.3)
            busy.append(pool.submit(call, f"{url}/predict", "POST", **image))  # the queue: full
            time.sleep(0.3)
            not_an_image = {"files": [("notes.txt", b"not an image")]}
            status, headers, body = call(f"{url}/predict", "POST", **not_an_image)
            assert status == 503 and "the prediction queue is full" in body["detail"], body
            assert int(headers["Retry-After"]) >= 1
            predictor.gate.set()
            assert [f.result(30)[0] for f in busy] == [200, 200]
        assert call(f"{url}/predict", "POST", **not_an_image)[0] == 422  # room again: decoded
    finally:
        predictor.gate.set()
        stop()


def test_a_model_unloaded_while_its_request_is_read_is_loaded_again(api):
    app = create_api_app(api["home"], limits=LIMITS, cache_size=1)
    cache, real_get = app.state.cache, app.state.cache.get
    handed = []

    def get(run_id):
        server = real_get(run_id)
        if not handed:  # meanwhile another request's run takes its place in the cache
            real_get(api["det"])
        handed.append(server)
        return server

    cache.get = get
    url, stop = serve(app)
    try:
        image = api["images"][1]
        status, _, got = call(f"{url}/api/runs/{api['cls']}/predict", "POST",
                              api["tokens"]["vic"], files=[(image.name, image.read_bytes())])  # fmt: skip
        assert status == 200, got
        assert got["predictions"][0]["label"] in ("cat", "dog", "fox")
        assert len(handed) == 2 and handed[0] is not handed[1]
    finally:
        stop()


def test_a_slow_model_load_stalls_only_its_own_runs_predictions(api, monkeypatch):
    # The cache loaded under one lock: a cold model held up every run's predictions.
    app = create_api_app(api["home"], limits=LIMITS, cache_size=2)
    url, stop = serve(app)
    real_load, gate, loads = ModelServer.load, threading.Event(), []

    def slow_load(run_id, *args, **kwargs):
        loads.append(run_id)
        if run_id == api["det"]:
            assert gate.wait(30), "the test never opened the gate"
        return real_load(run_id, *args, **kwargs)

    image = api["images"][1]

    def predict(run_id):
        return call(f"{url}/api/runs/{run_id}/predict", "POST", api["tokens"]["vic"],
                    files=[(image.name, image.read_bytes())])  # fmt: skip

    monkeypatch.setattr(ModelServer, "load", slow_load)
    try:
        assert predict(api["cls"])[0] == 200  # loaded, before the slow one starts
        with ThreadPoolExecutor(3) as pool:
            cold = [pool.submit(predict, api["det"]) for _ in range(2)]
            deadline = time.monotonic() + 30
            while api["det"] not in loads:
                assert time.monotonic() < deadline, "the detection run's load never started"
                time.sleep(0.01)
            warm = pool.submit(predict, api["cls"])
            try:
                status, _, got = warm.result(timeout=20)  # one lock for all: waits for the gate
                still_loading = not any(f.done() for f in cold)
            finally:
                gate.set()
            assert status == 200 and still_loading, got
            assert [f.result(30)[0] for f in cold] == [200, 200]
        assert loads == [api["cls"], api["det"]]  # two requests for a cold run: one load
        assert len(app.state.cache._servers) == 2 and not app.state.cache._loads
    finally:
        gate.set()
        stop()


def wait_for_server(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not answer within {timeout}s")


def test_serve_model_command_serves_the_runs_predictions_and_its_docs(api):
    from engine.launch import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "--home", str(api["home"]), "serve-model",
         str(api["cls"]), "--port", str(port), "--host", "127.0.0.1", "--device", "cpu"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, proc)
        image = api["images"][1]
        status, _, got = call(f"{url}/predict", "POST", files=[(image.name, image.read_bytes())])
        assert status == 200, got
        predictor = load_predictor(api["cls"], home=api["home"], device="cpu")
        expected = predictor.predict([predictor.read(image)])[0]
        assert got["predictions"][0]["label"] == expected["label"]
        assert got["predictions"][0]["score"] == pytest.approx(expected["score"], abs=2e-6)
        schema = call(f"{url}/openapi.json")[2]
        assert {"/predict", "/health", "/model"} <= set(schema["paths"])
        body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(body)
        with urllib.request.urlopen(f"{url}/docs", timeout=10) as docs:
            assert docs.status == 200 and b"swagger" in docs.read().lower()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group it was started in: itself
        proc.wait(30)
    out = proc.stdout.read()
    assert f"VisionBoard run {api['cls']} (classification, cpu): POST {url}/predict" in out


def test_serve_model_of_an_unknown_run_or_bad_limits_fails_cleanly(api, capsys):
    assert cli.main(["--home", str(api["home"]), "serve-model", "999"]) == 2
    assert "run 999 not found" in capsys.readouterr().err
    args = ["--home", str(api["home"]), "serve-model", str(api["cls"]), "--max-images", "100"]
    assert cli.main(args) == 2
    assert "max_images 100 is above max_queue 64" in capsys.readouterr().err
    if not torch.cuda.is_available():  # no traceback: what is wrong, what to use
        for command in (["serve-model", str(api["cls"])], ["api"]):
            assert cli.main(["--home", str(api["home"]), *command, "--device", "cuda"]) == 2
            assert "device 'cuda': torch sees no CUDA GPU here" in capsys.readouterr().err


def test_serve_starts_the_automation_api_says_where_once_and_restarts_it(home, monkeypatch, capsys):
    started, always_dies = [], False

    class Child:  # the dashboard lives 8 polls; the first API dies at once, the next lives
        pid = 1

        def __init__(self, command, env, cwd):
            self.command, self.polls = command, 0
            self.api = "api" in command
            self.dies = self.api and (always_dies or not any("api" in c for c in started))
            started.append(command)
            self.returncode = None

        def poll(self):
            self.polls += 1
            if self.dies or ("streamlit" in self.command and self.polls > 8):
                self.returncode = 1 if self.dies else 0
            return self.returncode

        def send_signal(self, sig):
            self.returncode = -sig

        def wait(self, timeout=None):
            return self.returncode

    monkeypatch.setattr(cli.subprocess, "Popen", Child)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    monkeypatch.setattr(cli.time, "sleep", lambda seconds: None)
    monkeypatch.setattr("engine.sample_datasets.ensure_samples", lambda db, home: [])
    assert cli.main(["--home", str(home), "serve", "--api-port", "8777"]) == 0
    apis = [c for c in started if "api" in c]
    assert len(apis) == 2 and apis[0] == apis[1]  # died, started again
    assert apis[0][apis[0].index("--port") + 1] == "8777" and "--no-banner" in apis[0]
    out = capsys.readouterr().out
    assert out.count("VisionBoard API: http://localhost:8777/docs") == 1
    assert "the API stopped (exit code 1); started a new one" in out
    started.clear()
    assert cli.main(["--home", str(home), "serve", "--api-port", "0"]) == 0
    assert not any("api" in c for c in started)
    assert cli.main(["--home", str(home), "serve", "--port", "8600", "--api-port", "8600"]) == 2
    assert "--api-port 8600 is the dashboard's --port" in capsys.readouterr().err
    always_dies = True  # its port taken, say: three tries, then it says why it gave up
    assert cli.main(["--home", str(home), "serve", "--api-port", "8777"]) == 0
    assert len([c for c in started if "api" in c]) == 3
    assert "the API stopped at start 3 times (exit code 1; is port 8777 taken?)" in (
        capsys.readouterr().out
    )


def test_api_alone_says_where_it_listens_unless_serve_started_it(home, monkeypatch, capsys):
    monkeypatch.setattr(sign_in, "secrets_files", list)  # no secrets files
    monkeypatch.setattr("engine.api.server.run_app", lambda app, host, port: None)
    assert cli.main(["--home", str(home), "api", "--port", "8778"]) == 0
    assert "VisionBoard API: http://localhost:8778/docs" in capsys.readouterr().out
    assert cli.main(["--home", str(home), "api", "--port", "8778", "--no-banner"]) == 0
    assert capsys.readouterr().out == ""


# -- the automation API: tokens and roles --------------------------------------------------------


def test_calls_need_a_valid_token_of_an_enabled_account(api):
    url = api["url"]
    assert call(f"{url}/api/health")[2] == {"status": "ok"}  # the only call without a token
    status, headers, body = call(f"{url}/api/runs")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer <token>" in body["detail"]
    status, _, body = call(f"{url}/api/runs", token="vb_0000_guessed")
    assert status == 401 and "invalid API token" in body["detail"]
    status, _, me = call(f"{url}/api/me", token=api["tokens"]["vic"])
    assert (status, me["username"], me["role"]) == (200, "vic", "viewer")

    db = api["db"]
    store.add_user(db, "cy", "member", PASSWORD, by=ADMIN)
    token, record = store.add_api_token(db, "cy", "ci", by={"username": "cy", "role": "member"})
    assert call(f"{url}/api/runs", token=token)[0] == 200
    store.set_user_role(db, "cy", "viewer", by=ADMIN)  # the token carries the current role
    assert call(f"{url}/api/me", token=token)[2]["role"] == "viewer"
    store.set_user_disabled(db, "cy", by=ADMIN)
    assert call(f"{url}/api/runs", token=token)[0] == 401
    store.set_user_disabled(db, "cy", False, by=ADMIN)
    assert call(f"{url}/api/runs", token=token)[0] == 200
    assert cli.main(["--home", str(api["home"]), "tokens", "revoke", record["id"]]) == 0
    assert call(f"{url}/api/runs", token=token)[0] == 401


def test_tokens_act_as_their_users_under_the_stores_rules(api):
    url, tokens = api["url"], api["tokens"]
    config = {"dataset": str(api["data"]), "model": "efficientnet_b0", "pretrained": False,
              "image_size": 32, "epochs": 1}  # fmt: skip
    status, _, body = call(f"{url}/api/runs", "POST", tokens["vic"], {"config": config})
    assert status == 403 and "vic (viewer) may not queue runs" in body["detail"]

    status, _, run = call(f"{url}/api/runs", "POST", tokens["ada"], {"config": config,
                                                                       "tags": ["api"]})  # fmt: skip
    assert status == 201, run
    assert (run["user"], run["status"], run["tags"]) == ("ada", "queued", ["api"])
    run_id = run["id"]
    status, _, shown = call(f"{url}/api/runs/{run_id}", token=tokens["vic"])
    assert status == 200 and shown["config"]["dataset"] == str(api["data"])
    assert shown["config"] == store.run_as_json(api["db"], run_id)["config"]
    assert any(r["id"] == run_id for r in call(f"{url}/api/runs?status=queued",
                                               token=tokens["vic"])[2])  # fmt: skip
    assert call(f"{url}/api/runs/{run_id}/metrics", token=tokens["vic"])[2]["metrics"] == []

    for who in ("vic", "bo"):
        status, _, body = call(f"{url}/api/runs/{run_id}/cancel", "POST", tokens[who])
        assert status == 403 and f"may not cancel run {run_id} (owned by ada)" in body["detail"]
    assert store.get_run(api["db"], run_id)["status"] == "queued"
    status, _, body = call(f"{url}/api/runs/{run_id}/cancel", "POST", tokens["ada"])
    assert (status, body["status"]) == (200, "cancelled")
    status, _, body = call(f"{url}/api/runs/{run_id}/cancel", "POST", tokens["ada"])
    assert status == 409 and "only a queued or running run can be cancelled" in body["detail"]
    status, _, body = call(f"{url}/api/runs/{run_id}/resume", "POST", tokens["bo"])
    assert status == 403
    status, _, body = call(f"{url}/api/runs/{run_id}/resume", "POST", tokens["ada"])
    assert (status, body["status"]) == (200, "queued")
    status, _, body = call(f"{url}/api/runs/{run_id}/cancel", "POST", tokens["root"])
    assert (status, body["status"]) == (200, "cancelled")  # an admin cancels anyone's
    trail = store.list_audit(api["db"], by=ADMIN, target_id=str(run_id))
    assert [(r["username"], r["action"]) for r in reversed(trail)] == [
        ("ada", "queue"), ("ada", "cancel"), ("ada", "resume"), ("root", "cancel")
    ]  # fmt: skip

    for missing in (f"{url}/api/runs/999", f"{url}/api/runs/999/metrics"):
        status, _, body = call(missing, token=tokens["vic"])
        assert (status, body["detail"]) == (404, "run 999 not found")
    status, _, body = call(f"{url}/api/runs/999/cancel", "POST", tokens["root"])
    assert (status, body["detail"]) == (404, "run 999 not found")
    names = {d["name"] for d in call(f"{url}/api/datasets", token=tokens["vic"])[2]}
    assert not {"digits", "digits-detection"} & names  # runs on own data build no samples
    sample = {**config, "dataset": "digits"}
    assert call(f"{url}/api/runs", "POST", tokens["ada"], {"config": sample})[0] == 201
    names = {d["name"] for d in call(f"{url}/api/datasets", token=tokens["vic"])[2]}
    assert {"digits", "digits-detection"} <= names  # built by the first run that named one


def test_a_config_train_would_refuse_is_a_422_naming_each_field(api):
    url, token = api["url"], api["tokens"]["ada"]
    bad = {"dataset": str(api["data"]), "lr": -1, "optimizer": "adamw2", "colour": True}
    status, _, body = call(f"{url}/api/runs", "POST", token, {"config": bad})
    assert status == 422 and body["detail"].startswith("invalid config")
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert set(fields) == {"lr", "optimizer", "colour"}
    assert "adamw2" in fields["optimizer"] and "adam" in fields["optimizer"]
    missing = {"dataset": str(api["home"].parent / "nowhere"), "pretrained": False}
    status, _, body = call(f"{url}/api/runs", "POST", token, {"config": missing})
    assert status == 422 and body["detail"].startswith("nothing queued")
    assert [e["field"] for e in body["errors"]] == ["dataset"]
    status, _, body = call(f"{url}/api/runs", "POST", token, {"tags": []})
    assert status == 422 and "config" in body["detail"]
    status, _, body = call(
        f"{url}/api/runs", "POST", token, raw=b"{", content_type="application/json"
    )
    assert status == 400 and "JSON" in body["detail"]
    status, _, body = call(f"{url}/api/runs?status=sleeping", token=token)
    assert status == 422 and "status 'sleeping': expected one of queued" in body["detail"]


# -- tokens: the store, the CLI, the dashboard --------------------------------------------------


def test_tokens_are_hashed_at_rest_owned_revoked_and_audited(store_db):
    db = store_db
    for name, role in TEAM.items():
        store.add_user(db, name, role, PASSWORD, by=ADMIN)
    vic = store.get_user(db, "vic")
    token, record = store.add_api_token(db, "vic", "laptop", by=vic)  # a viewer's own: reads
    assert token.startswith(f"vb_{record['id']}_") and record["name"] == "laptop"
    stored = [dict(r) for r in db.query("select * from api_tokens")]
    assert token not in json.dumps(stored)
    assert stored[0]["token_hash"] == passwords.hash_token(token)
    assert store.api_token_user(db, token, local_mode=False)["role"] == "viewer"
    assert store.api_token_user(db, token + "x", local_mode=False) is None

    ada = store.get_user(db, "ada")
    with pytest.raises(store.PermissionDenied, match="ada \\(member\\) may not manage users"):
        store.add_api_token(db, "vic", by=ada)
    with pytest.raises(store.PermissionDenied):
        store.revoke_api_token(db, record["id"], by=ada)
    with pytest.raises(store.PermissionDenied):
        store.list_api_tokens(db, "vic", by=ada)
    assert [t["id"] for t in store.list_api_tokens(db, "vic", by=vic)] == [record["id"]]
    with pytest.raises(store.UserError, match="no user 'ghost'"):
        store.add_api_token(db, "ghost", by=ADMIN)
    with pytest.raises(store.UserError, match="this server has accounts"):
        store.add_api_token(db, "me", by=ADMIN, local_admin=True)
    store.revoke_api_token(db, record["id"], by=store.get_user(db, "root"))
    assert store.api_token_user(db, token, local_mode=False) is None
    assert store.list_api_tokens(db, by=ADMIN)[0]["revoked"]
    trail = store.list_audit(db, by=ADMIN, target_id="vic")
    assert [(r["username"], r["action"], r["detail"].get("token")) for r in trail[:2]] == [
        ("root", "revoke_token", record["id"]), ("vic", "add_token", record["id"])
    ]  # fmt: skip


def test_without_accounts_the_cli_makes_the_local_admins_token(home, db, capsys, monkeypatch):
    monkeypatch.setattr(sign_in, "secrets_files", list)  # no secrets files
    monkeypatch.setenv("VISIONBOARD_USER", "me")
    assert cli.main(["--home", str(home), "tokens", "add", "--name", "ci"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("vb_") and "of me (admin, local admin): shown this once" in err
    user = store.api_token_user(db, token, local_mode=True)
    assert (user["username"], user["role"]) == ("me", "admin")
    assert cli.main(["--home", str(home), "tokens", "add", "--user", "ada"]) == 2
    assert "this server has no accounts" in capsys.readouterr().err

    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)  # accounts now: that token stops
    assert store.api_token_user(db, token, local_mode=False) is None
    assert cli.main(["--home", str(home), "tokens", "add"]) == 2
    assert "no account 'me': --user names the account" in capsys.readouterr().err
    assert cli.main(["--home", str(home), "tokens", "add", "--user", "ada"]) == 0
    ada_token = capsys.readouterr().out.strip()
    assert store.api_token_user(db, ada_token, local_mode=False)["username"] == "ada"
    assert cli.main(["--home", str(home), "tokens", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((t["username"], t["local_admin"]) for t in listed) == [
        ("ada", False), ("me", True)
    ]  # fmt: skip
    assert cli.main(["--home", str(home), "tokens", "revoke", "nope"]) == 2
    assert "no API token 'nope'" in capsys.readouterr().err


def test_api_refuses_other_addresses_without_accounts(home, capsys, monkeypatch):
    monkeypatch.setattr(sign_in, "secrets_files", list)  # no secrets files
    monkeypatch.setattr("engine.api.server.run_app", lambda *a, **k: pytest.fail("served"))
    assert cli.main(["--home", str(home), "api", "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0 would let anyone" in capsys.readouterr().err


def test_tokens_page_makes_a_token_shown_once_and_revokes_it(db):
    from test_permissions import open_as

    store.add_user(db, "ada", "member", PASSWORD, by=ADMIN)
    at = open_as(db, "ada", "tokens")
    assert any("No token yet" in i.value for i in at.info)
    at.text_input(key="tokens_name").set_value("notebook")
    next(b for b in at.button if b.label == "Make a token").click().run()
    token = at.code[0].value
    assert store.api_token_user(db, token, local_mode=False)["username"] == "ada"
    (record,) = store.list_api_tokens(db, "ada", by=ADMIN)
    assert record["name"] == "notebook" and f"Token {record['id']} made" in at.success[0].value
    at.run()
    assert not at.code  # shown once
    at.button(key="tokens_revoke").click().run()
    assert store.api_token_user(db, token, local_mode=False) is None
    assert list(at.dataframe[0].value["status"]) == ["revoked"]
