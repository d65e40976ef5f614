"""The TF Serving REST endpoint: real HTTP on loopback, concurrent requests, errors as 4xx.

Load, stalled clients, hostile uploads and memory run against `scripts/serve.py` in a
subprocess: tests/test_serve_load.py.
"""

import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import re
import socket
import threading

import hypothesis
import numpy as np
import pytest
import tensorflow as tf
from export_helpers import tiny_segmenter
from hypothesis import strategies as st
from PIL import Image

from keras_fusionseg.export import export_saved_model
from keras_fusionseg.export.serving import PredictionService, RestApplication, running_server

MODEL = "shapes"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    export_dir = tmp_path_factory.mktemp("serve") / "sm"
    export_saved_model(tiny_segmenter(num_classes=3), export_dir, include_probabilities=True)
    return PredictionService(str(export_dir), MODEL, max_pixels=128 * 128, max_batch=4)


@pytest.fixture
def server(service):
    with running_server(service, max_body_bytes=2 << 20) as url:
        yield url.removeprefix("http://")


def _request(address, method, path, body=None, timeout=60):
    connection = http.client.HTTPConnection(address, timeout=timeout)
    try:
        payload = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _png_b64(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _expected(service, image):
    out = service.signatures["serving_default"](images=tf.constant(image[None]))
    return out["class_ids"][0].numpy()


def test_status_and_metadata(server):
    status, body = _request(server, "GET", f"/v1/models/{MODEL}")
    assert status == 200 and body["model_version_status"][0]["state"] == "AVAILABLE"
    status, body = _request(server, "GET", f"/v1/models/{MODEL}/versions/1/metadata")
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "serve_bytes", "serve_examples"}
    assert signatures["serving_default"]["inputs"]["images"]["dtype"] == "uint8"
    status, body = _request(server, "GET", "/v1/models/other")
    assert status == 404 and "error" in body


def test_row_and_columnar_predict(server, service, rng):
    images = rng.integers(0, 256, (2, 24, 40, 3), dtype=np.uint8)
    expected = [_expected(service, image) for image in images]
    status, body = _request(
        server, "POST", f"/v1/models/{MODEL}:predict", {"instances": images.tolist()}
    )
    assert status == 200, body
    for prediction, want in zip(body["predictions"], expected, strict=True):
        np.testing.assert_array_equal(prediction["class_ids"], want)
        probabilities = np.asarray(prediction["probabilities"])
        assert probabilities.shape == (24, 40, 3)
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    status, body = _request(
        server, "POST", f"/v1/models/{MODEL}:predict", {"inputs": {"images": images.tolist()}}
    )
    assert status == 200, body
    np.testing.assert_array_equal(body["outputs"]["class_ids"], np.stack(expected))


def test_b64_images_of_different_sizes(server, service, rng):
    first = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    second = rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)
    request = {"instances": [{"b64": _png_b64(first)}, {"images": {"b64": _png_b64(second)}}]}
    status, body = _request(server, "POST", f"/v1/models/{MODEL}/versions/1:predict", request)
    assert status == 200, body
    np.testing.assert_array_equal(body["predictions"][0]["class_ids"], _expected(service, first))
    np.testing.assert_array_equal(body["predictions"][1]["class_ids"], _expected(service, second))


def test_examples_signature(server, service, rng):
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    encoded = base64.b64decode(_png_b64(image))
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))}
    example = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    request = {
        "signature_name": "serve_examples",
        "instances": [{"b64": base64.b64encode(example).decode()}],
    }
    status, body = _request(server, "POST", f"/v1/models/{MODEL}:predict", request)
    assert status == 200, body
    np.testing.assert_array_equal(body["predictions"][0]["class_ids"], _expected(service, image))


BAD_REQUESTS = [
    (b"{not json", "not valid JSON"),
    ({"foo": 1}, "exactly one"),
    ({"instances": [[[[0.5, 0.5, 0.5]]]]}, "dtype float64"),
    ({"instances": [[[[300, 0, 0]]]]}, "outside"),
    ({"instances": [[[[1, 2]]]]}, "shape"),
    ({"instances": [[[[1, 2, 3]], [[1, 2]]]]}, "rectangular|shape"),
    ({"instances": np.zeros((1, 129, 129, 3), np.uint8).tolist()}, "height \\* width"),
    ({"instances": [{"b64": "!!!"}]}, "base64"),
    ({"instances": [{"b64": base64.b64encode(b"hello").decode()}]}, "PNG or JPEG"),
    ({"signature_name": "nope", "instances": [[[[1, 2, 3]]]]}, "Unknown signature_name"),
    ({"instances": [[[[1, 2, 3]]]] * 5}, "At most 4"),
    ({"instances": [{"pixels": [[[1, 2, 3]]]}]}, "single input"),
]


@pytest.mark.parametrize("request_body, message", BAD_REQUESTS)
def test_bad_requests_get_400_and_server_keeps_serving(server, request_body, message):
    status, body = _request(server, "POST", f"/v1/models/{MODEL}:predict", request_body)
    assert status == 400, body
    assert re.search(message, body["error"]), body["error"]
    status, _ = _request(server, "GET", f"/v1/models/{MODEL}")
    assert status == 200


def test_oversized_body_and_oversized_b64_image(server):
    connection = http.client.HTTPConnection(server, timeout=60)
    try:  # waitress answers 413 before reading the body; the upload may then be cut short
        connection.request("POST", f"/v1/models/{MODEL}:predict", body=b"x" * (3 << 20))
    except OSError:
        pass
    assert connection.getresponse().status == 413
    connection.close()
    big = np.zeros((200, 100, 3), np.uint8)
    status, body = _request(
        server, "POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": _png_b64(big)}]}
    )
    assert status == 400 and "200x100" in body["error"]
    assert _request(server, "GET", f"/v1/models/{MODEL}")[0] == 200


def test_concurrent_requests(server, service, rng):
    images = [rng.integers(0, 256, (16 + 4 * k, 24, 3), dtype=np.uint8) for k in range(8)]
    expected = [_expected(service, image) for image in images]

    def call(k):
        if k % 3 == 0:  # interleave malformed requests with good ones
            return None, _request(server, "POST", f"/v1/models/{MODEL}:predict", b"[")
        request = {"instances": [{"b64": _png_b64(images[k])}]}
        return k, _request(server, "POST", f"/v1/models/{MODEL}:predict", request)

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(call, range(8), timeout=120))
    for k, (status, body) in results:
        if k is None:
            assert status == 400
        else:
            assert status == 200, body
            np.testing.assert_array_equal(body["predictions"][0]["class_ids"], expected[k])


def test_server_binds_loopback_and_stops(service):
    with running_server(service) as url:
        assert url.startswith("http://127.0.0.1:")
        address = url.removeprefix("http://")
        assert _request(address, "GET", f"/v1/models/{MODEL}")[0] == 200
    with pytest.raises(OSError):
        _request(address, "GET", f"/v1/models/{MODEL}", timeout=2)


def test_service_rejects_bad_model_name(service):
    with pytest.raises(ValueError, match="model_name"):
        PredictionService("unused", "bad name/")


def test_chunked_body_is_accepted(server, service, rng):
    image = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    payload = json.dumps({"instances": [{"b64": _png_b64(image)}]}).encode()
    pieces = (payload[k : k + 100] for k in range(0, len(payload), 100))
    connection = http.client.HTTPConnection(server, timeout=60)
    try:
        connection.request("POST", f"/v1/models/{MODEL}:predict", body=pieces, encode_chunked=True)
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200, body
    np.testing.assert_array_equal(body["predictions"][0]["class_ids"], _expected(service, image))


def _raw_status(address, request, timeout=20):
    """Sends raw bytes while reading the answer; returns (status, body).

    Sending runs in a thread because the server may answer and close before taking the whole
    upload; `Connection: close` is assumed.
    """
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:

        def send():
            with contextlib.suppress(OSError):
                for k in range(0, len(request), 1 << 16):
                    sock.sendall(request[k : k + (1 << 16)])

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
        sender.join(timeout)
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _post_head(headers):
    lines = [f"POST /v1/models/{MODEL}:predict HTTP/1.1", "Host: x", "Connection: close"]
    return ("\r\n".join(lines + headers) + "\r\n\r\n").encode()


HOSTILE_HEADERS = [  # (headers, body sent, status, where the answer comes from)
    (["Content-Length: -1"], b"x" * 1000, 400, "waitress"),
    (["Content-Length: 99999999999999999999"], b"", 413, "waitress"),  # no body follows
    (["Content-Length: 1e3"], b"{}", 400, "waitress"),
    (["Content-Length: 10", "Content-Length: 20"], b"{}", 400, "waitress"),
    ([], b"", 411, "app"),  # POST without a length
    (["Content-Length: 2", "Transfer-Encoding: chunked"], b"0\r\n\r\n", 400, "waitress"),
    (["Transfer-Encoding: chunked"], b"zz\r\nabc\r\n0\r\n\r\n", 400, "waitress"),
    (["Transfer-Encoding: chunked"], b"300000\r\n" + b"x" * (3 << 20), 413, "waitress"),
    (["X-Big: " + "a" * (80 << 10)], b"", 431, "waitress"),
]


@pytest.mark.parametrize("headers, body, status, source", HOSTILE_HEADERS)
def test_hostile_headers_get_4xx(server, headers, body, status, source):
    got, answer = _raw_status(server, _post_head(headers) + body)
    assert got == status, answer
    if source == "app":
        assert "error" in json.loads(answer)
    assert _request(server, "GET", f"/v1/models/{MODEL}")[0] == 200


def test_deeply_nested_json_gets_400(server):
    for depth in (100_000, 5_000, 40):
        body = b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
        status, answer = _request(server, "POST", f"/v1/models/{MODEL}:predict", body)
        assert status == 400, (depth, answer)
    status, answer = _request(server, "POST", f"/v1/models/{MODEL}:predict", b"[" * 100_000)
    assert status == 400 and "nested" in answer["error"]


def test_ipv6_loopback(service):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        context = running_server(service, host="::1")
        url = context.__enter__()
    except OSError as error:
        pytest.skip(f"cannot bind ::1: {error}")
    try:
        assert url.startswith("http://[::1]:")
        address = url.removeprefix("http://")
        assert (
            _raw_status(
                address,
                f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
            )[0]
            == 200
        )
    finally:
        context.__exit__(None, None, None)


def _failing_saved_model(path):
    """A SavedModel whose serving_default fails at run time, as a model with an op this CPU
    cannot run does (issue 10)."""

    class Broken(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def serve(self, images):
            tf.debugging.assert_equal(tf.shape(images)[0], -1, message="kernel unavailable")
            return {"class_ids": tf.zeros(tf.shape(images)[:3], tf.int32)}

    module = Broken()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def test_model_that_cannot_run_fails_at_start(tmp_path):
    _failing_saved_model(tmp_path / "broken")
    with pytest.raises(RuntimeError, match="(?s)cannot run on this machine.*kernel unavailable"):
        PredictionService(str(tmp_path / "broken"), MODEL)
    # Without the warm-up the same model would have been reported AVAILABLE.
    assert PredictionService(str(tmp_path / "broken"), MODEL, warmup=False).status()


# --- fuzzing: random and mutated requests never crash, hang or give 5xx ----------------------

_FUZZ = hypothesis.settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=list(hypothesis.HealthCheck),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-300, 300) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=40,
)
_KEYS = st.sampled_from(["instances", "inputs", "signature_name", "images", "b64", "examples"])
_REQUESTS = st.dictionaries(_KEYS, _JSON | st.builds(lambda v: {"b64": v}, st.text(max_size=12)))
_VALID = json.dumps(
    {"instances": [{"b64": _png_b64(np.full((4, 5, 3), 7, np.uint8))}, [[[1, 2, 3]]]]}
).encode()


def _call_app(app, body, method="POST", path=f"/v1/models/{MODEL}:predict", length=None):
    captured = {}

    def start_response(status, headers):
        captured["status"] = int(status.split(" ", 1)[0])

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)) if length is None else length,
        "wsgi.input": io.BytesIO(body),
    }
    answer = json.loads(b"".join(app(environ, start_response)))
    return captured["status"], answer


@pytest.fixture(scope="module")
def app(service):
    return RestApplication(service, max_body_bytes=1 << 20)


def _assert_answered(status, answer):
    assert status == 200 or 400 <= status < 500, (status, answer)
    assert ("error" in answer) == (status != 200)


@_FUZZ
@hypothesis.given(body=st.binary(max_size=200))
def test_fuzz_random_bytes(app, body):
    _assert_answered(*_call_app(app, body))


@_FUZZ
@hypothesis.given(request=_REQUESTS)
def test_fuzz_random_json_requests(app, request):
    _assert_answered(*_call_app(app, json.dumps(request).encode()))


@_FUZZ
@hypothesis.given(
    edits=st.lists(
        st.tuples(
            st.integers(0, len(_VALID) - 1),
            st.sampled_from([b"", b"[", b"}", b'"', b"9", b"\x00", b"\xff"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_mutated_valid_request(app, edits):
    body = bytearray(_VALID)
    for position, replacement in edits:
        body[position : position + 1] = replacement
    _assert_answered(*_call_app(app, bytes(body)))


@_FUZZ
@hypothesis.given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
    path=st.text(max_size=40).map(lambda tail: f"/v1/models/{tail}"),
    length=st.sampled_from(["", "-1", "abc", "99999999999", "0", "3"]),
)
def test_fuzz_method_path_and_length(app, method, path, length):
    status, answer = _call_app(app, b"{}", method=method, path=path, length=length)
    assert 400 <= status < 500, (status, answer)
