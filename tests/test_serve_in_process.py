"""`vitlens serve` in this process: what it accepts, what it refuses, and that it batches.

The server runs on a free 127.0.0.1 port with a stand-in model whose answer is a known function
of the pixels, so every row of every answer can be checked under load. The real model behind
the real command is in test_real_servers.py.
"""
import base64
import http.client
import io
import json
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from vitlens.cli.loadtest import Load, in_process, json_body, pixel_batches, post_all, served
from vitlens.cli.payload import Refused, parse, plain_pixels
from vitlens.cli.serve import Batcher, Server
from vitlens.data import images
from vitlens.data.images import load_image


class Means:
    """A stand-in model: each image's 'probabilities' are its mean pixel and 9 zeros."""
    size = 32
    classes = [f"c{i}" for i in range(10)]

    def __init__(self, delay_s: float = 0.0):
        self.delay_s, self.calls = delay_s, []

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3), x.shape
        self.calls.append(len(x))
        time.sleep(self.delay_s)
        out = np.zeros((len(x), 10), np.float32)
        out[:, 0] = x.reshape(len(x), -1).mean(1)
        return out


def expected(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).mean(1)


def encoded(img: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture
def server() -> Iterator[tuple[str, Means]]:
    model = Means()
    srv = Server(("127.0.0.1", 0), model, max_request=64, max_batch=32, max_bytes=2**20, timeout_s=10)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_port}/invocations", model
    finally:
        srv.shutdown()
        srv.server_close()


def test_parse_takes_pixels_as_mlflow_does_and_pictures_as_predict_does(tmp_path):
    x = pixel_batches(1, 3)[0]
    for key in ("inputs", "instances"):
        got = parse(json.dumps({key: x.tolist()}).encode(), 32, 8)
        assert got.dtype == np.uint8 and np.array_equal(got, x)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 200, 4), np.uint8))
    photo.save(tmp_path / "photo.png")
    Image.fromarray(x[0]).save(tmp_path / "small.jpg", quality=90)
    files = [tmp_path / "photo.png", tmp_path / "small.jpg"]
    body = {"images": [encoded(photo),
                       "data:image/jpeg;base64," + base64.b64encode(files[1].read_bytes()).decode()]}
    got = parse(json.dumps(body).encode(), 32, 8)
    assert np.array_equal(got, np.stack([load_image(f, 32)[0] for f in files]))


@pytest.mark.parametrize("body, status, says", [
    (b"{inputs: ", 400, "not JSON"),
    (b'{"pixels": []}', 400, '"inputs"'),
    (b'{"inputs": [], "images": []}', 400, '"inputs"'),
    (b'{"inputs": []}', 400, "non-empty list"),
    (json.dumps({"inputs": [[[0, 0, 0]] * 32] * 32}).encode(), 400, "shape (32, 32, 3)"),
    (json.dumps({"inputs": [[[[0, 0, 0, 0]] * 32] * 32]}).encode(), 400, "(1, 32, 32, 4)"),
    (json.dumps({"inputs": [[[[0, 0, 0]] * 31] * 32]}).encode(), 400, "(1, 32, 31, 3)"),
    (json.dumps({"inputs": [[[[300, 0, 0]] * 32] * 32]}).encode(), 400, "0..300"),
    (json.dumps({"inputs": [[[[-1, 0, 0]] * 32] * 32]}).encode(), 400, "-1..0"),
    (json.dumps({"inputs": [[[[0.5, 0, 0]] * 32] * 32]}).encode(), 400, "float64"),
    (json.dumps({"inputs": [[[["a", 0, 0]] * 32] * 32]}).encode(), 400, "<U"),
    (json.dumps({"inputs": [[[[0, 0, 0]] * 32] * 32, [[0]]]}).encode(), 400, "ragged"),
    (json.dumps({"inputs": [[[[0, 0, 0]] * 32] * 32] * 41}).encode(), 413, "at most 40"),
    (json.dumps({"images": ["not base64!"]}).encode(), 400, "images[0]: not base64"),
    (json.dumps({"images": [base64.b64encode(b"GIF89a....").decode()]}).encode(), 400,
     "images[0]: not an image"),
    (json.dumps({"images": [""]}).encode(), 400, "images[0]: empty image"),
    (json.dumps({"images": [3]}).encode(), 400, "base64 strings"),
])
def test_parse_refuses_what_is_not_images_in_one_line(body, status, says):
    with pytest.raises(Refused) as e:
        parse(body, 32, 40)
    assert e.value.status == status and says in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_a_truncated_picture_is_refused(tmp_path):
    whole = base64.b64decode(encoded(Image.new("RGB", (64, 64), "red"), "PNG"))
    body = json.dumps({"images": [base64.b64encode(whole[:len(whole) // 2]).decode()]})
    with pytest.raises(Refused, match=r"images\[0\]: unreadable"):
        parse(body.encode(), 32, 8)


def test_the_batcher_runs_waiting_requests_together_and_answers_each_its_own_rows():
    model = Means(delay_s=0.05)
    batcher = Batcher(model.probabilities, max_images=8, max_waiting=64)
    batches = pixel_batches(16, 3, seed=3)
    got: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, batcher(batches[i], 10)))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(batches):
        assert np.allclose(got[i][:, 0], expected(x)), i
    assert sum(model.calls) == 48 and len(model.calls) < 12, model.calls  # batched, not 16 calls
    assert max(model.calls) == 6, model.calls  # two requests of 3 fit in 8, three do not


def test_a_failing_model_fails_every_waiting_request_in_one_line_and_recovers():
    fails = {"now": True}

    def predict(x: np.ndarray) -> np.ndarray:
        if fails["now"]:
            raise RuntimeError("out of memory\nmore lines")
        return np.zeros((len(x), 10))
    batcher = Batcher(predict, max_images=8, max_waiting=8)
    with pytest.raises(Refused) as e:
        batcher(pixel_batches(1, 2)[0], 5)
    assert e.value.status == 500 and str(e.value) == "the model failed: out of memory"
    fails["now"] = False
    assert batcher(pixel_batches(1, 2)[0], 5).shape == (2, 10)


def test_under_load_bad_requests_get_4xx_and_good_ones_their_own_answers(server):
    url, model = server
    good = pixel_batches(60, 4, seed=5)
    bad = [b"{inputs: ", json.dumps({"inputs": [[[[300, 0, 0]] * 32] * 32]}).encode(),
           json.dumps({"images": ["!!"]}).encode(), b'{"pixels": 1}',
           json.dumps({"inputs": [[[[0, 0, 0]] * 32] * 32] * 65}).encode(),
           json.dumps({"images": [encoded(Image.new("RGB", (90, 30)), "JPEG")]}).encode()]
    bodies = [json_body(x) for x in good] + bad * 4
    order = np.random.default_rng(0).permutation(len(bodies))
    answers = post_all(url, [bodies[i] for i in order], clients=8, timeout_s=10)
    assert len(answers) == len(bodies)
    for answer, i in zip(answers, order):
        doc = json.loads(answer.body)
        if i < len(good):
            assert answer.status == 200, answer
            assert np.allclose(np.array(doc["predictions"])[:, 0], expected(good[i]))
            assert doc["classes"] == Means.classes
        elif bodies[i] is bad[-1]:  # a real picture, any size: answered
            assert answer.status == 200 and len(doc["predictions"]) == 1
        else:
            assert answer.status in (400, 413), answer
            assert doc["message"] and "\n" not in doc["message"]
    assert max(model.calls) > 4  # requests were run together


def test_oversized_wrong_type_and_unknown_paths_are_refused_and_it_keeps_serving(server):
    url, _ = server
    base = url.rsplit("/", 1)[0]
    x = pixel_batches(1, 2)[0]
    # Just over the limit, and far over it: the server answers before it has read the body
    # and must drain it, or the client, still sending, gets a reset instead of the 413.
    for size in (2**20 + 1, 8 * 2**20):
        [big] = post_all(url, [b" " * size], clients=1, timeout_s=5)
        assert big.status == 413 and f"{size} bytes, at most 1048576".encode() in big.body, big
    [plain] = post_all(url, [json_body(x)], clients=1, timeout_s=5, content_type="text/plain")
    assert plain.status == 415
    [nowhere] = post_all(base + "/predict", [json_body(x)], clients=1, timeout_s=5)
    assert nowhere.status == 404
    [ok] = post_all(url, [json_body(x)], clients=1, timeout_s=5)
    assert ok.status == 200 and np.allclose(np.array(json.loads(ok.body)["predictions"])[:, 0],
                                            expected(x))


def test_the_load_test_counts_what_it_sent_and_what_came_back(server):
    url, model = server
    batches = pixel_batches(40, 8)
    load = served(url, batches, clients=4, timeout_s=10)
    assert (load.requests, load.errors, load.images) == (40, 0, 320)
    assert 0 < load.p50_ms <= load.p99_ms < 10_000 and load.images_per_second > 0
    assert sum(model.calls) == 320
    local = in_process(Means(delay_s=0.01).probabilities, batches)
    assert isinstance(local, Load) and local.images == 320 and local.seconds >= 40 * 0.01
    dead = served("http://127.0.0.1:9/invocations", batches[:3], clients=2, timeout_s=1)
    assert (dead.requests, dead.errors, dead.images) == (3, 3, 0)


def test_the_fast_pixel_parser_agrees_with_json_or_leaves_the_body_to_it():
    """plain_pixels reads the common body with numpy; on any mangled body it must either give
    exactly what json.loads gives or step aside (None), never a different array."""
    rng = np.random.default_rng(0)
    x = pixel_batches(2, 3, seed=4)[0]
    for body in (json.dumps({"inputs": x.tolist()}), json.dumps({"instances": x.tolist()}, indent=2),
                 json.dumps({"inputs": x.tolist()}, separators=(",", ":"))):
        assert np.array_equal(plain_pixels(body.encode(), 32, 8), x)
    assert plain_pixels(json_body(x), 32, 2) is None  # more images than allowed
    seed = bytearray(json.dumps({"inputs": x[:1].tolist()}).encode())
    alphabet = b'0123456789,[] \n\x0c{}"5-.'
    accepted = 0
    for _ in range(3000):
        body = bytearray(seed)
        for _ in range(rng.integers(1, 3)):
            k, ch, op = rng.integers(0, len(body)), alphabet[rng.integers(0, len(alphabet))], \
                rng.integers(0, 3)
            if op == 0:
                body[k] = ch
            elif op == 1:
                body.insert(k, ch)
            else:
                del body[k]
        got = plain_pixels(bytes(body), 32, 8)
        if got is not None:
            accepted += 1
            doc = json.loads(bytes(body))
            want = np.asarray(next(iter(doc.values())))
            assert want.dtype.kind in "iu" and np.array_equal(want, got), bytes(body)
    assert 300 < accepted < 2700  # both kinds were tried


def test_a_picture_over_the_pixel_limit_is_refused_before_it_is_decoded(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 399)
    body = json.dumps({"images": [encoded(Image.new("RGB", (20, 20)))]}).encode()
    with pytest.raises(Refused, match=r"images\[0\]: 20x20 pixels, more than 399"):
        parse(body, 32, 8)
    monkeypatch.setattr(images, "MAX_PIXELS", 400)
    assert parse(body, 32, 8).shape == (1, 32, 32, 3)


def test_a_request_without_a_length_gets_411(server):
    url, _ = server
    port = int(url.split(":")[2].split("/")[0])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("POST", "/invocations")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 411 and b"Content-Length" in reply.read()
    conn.close()
