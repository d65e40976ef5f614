"""A local HTTP endpoint speaking the TF Serving REST predict API for an exported SavedModel.

Clients written for TF Serving work unchanged:

- `GET  /v1/models/<name>` -> model status; `GET /v1/models/<name>/metadata` -> signatures;
- `POST /v1/models/<name>:predict` with `{"signature_name": ..., "instances": [...]}` (row
  format, answered with `{"predictions": [...]}`) or `{"inputs": ...}` (columnar, answered
  with `{"outputs": ...}`); binary strings are `{"b64": "..."}`. A request without
  `signature_name` whose images are all `{"b64": ...}` goes to `serve_bytes`.

A malformed request, a wrong dtype or an oversized image is answered with 400 and
`{"error": "..."}` and the server keeps serving. The production path is TF Serving with the
same SavedModel; this server (stdlib `http.server`, because it needs no extra dependency) is
for local use and tests.
"""

import base64
import binascii
import contextlib
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_fusionseg.export.saved_model import IMAGE_KEY

_ROUTE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(?::(predict)|/(metadata))?$")


class RequestError(ValueError):
    """A client error, answered with HTTP 400."""


class PredictionService:
    """Loads a SavedModel and answers TF Serving REST requests (transport-independent).

    Args:
        saved_model_dir: str, a SavedModel written by `export_saved_model`.
        model_name: str, the `<name>` in the URLs.
        max_pixels: int, largest height * width accepted per image.
        max_batch: int, most images per request.
        max_concurrent: int, predictions running at once (bounds memory).
    """

    def __init__(
        self, saved_model_dir, model_name, *, max_pixels=2048 * 2048, max_batch=16, max_concurrent=2
    ):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", model_name or ""):
            raise ValueError(
                f"`model_name` must be letters, digits, '_', '.' or '-', received {model_name!r}."
            )
        self.model_name = model_name
        self.max_pixels = int(max_pixels)
        self.max_batch = int(max_batch)
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.loaded = tf.saved_model.load(saved_model_dir)
        self.signatures = dict(self.loaded.signatures)
        if "serving_default" not in self.signatures:
            raise ValueError(f"SavedModel {saved_model_dir!r} has no 'serving_default' signature.")
        self.channels = self._input_spec("serving_default")[1].shape[-1]

    def _input_spec(self, signature_name):
        inputs = self.signatures[signature_name].structured_input_signature[1]
        ((name, spec),) = inputs.items()
        return name, spec

    # --- status -----------------------------------------------------------------------------

    def status(self):
        return {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }

    def metadata(self):
        signature_def = {}
        for name, fn in self.signatures.items():
            signature_def[name] = {
                "inputs": {
                    key: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                    for key, spec in fn.structured_input_signature[1].items()
                },
                "outputs": {
                    key: {"dtype": spec.dtype.name, "shape": spec.shape.as_list()}
                    for key, spec in fn.structured_outputs.items()
                },
            }
        return {
            "model_spec": {"name": self.model_name, "version": "1"},
            "metadata": {"signature_def": {"signature_def": signature_def}},
        }

    # --- predict ----------------------------------------------------------------------------

    def predict(self, body):
        """Answers a predict request body (bytes); raises `RequestError` for client errors."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"The request body is not valid JSON: {error}") from None
        if not isinstance(request, dict):
            raise RequestError("The request body must be a JSON object.")
        has_rows, has_columns = "instances" in request, "inputs" in request
        if has_rows == has_columns:
            raise RequestError('The request must have exactly one of "instances" or "inputs".')
        items = request["instances"] if has_rows else request["inputs"]
        signature_name = request.get("signature_name")
        if signature_name is None:
            signature_name = "serve_bytes" if _all_b64(items) else "serving_default"
        if signature_name not in self.signatures:
            raise RequestError(
                f"Unknown signature_name {signature_name!r}; available: {sorted(self.signatures)}."
            )
        input_name, spec = self._input_spec(signature_name)
        values = _unwrap_named(items, input_name, rows=has_rows)
        if not isinstance(values, list) or not values:
            raise RequestError(f'"{input_name}" must be a non-empty list (one entry per image).')
        if len(values) > self.max_batch:
            raise RequestError(
                f"At most {self.max_batch} images per request, received {len(values)}."
            )
        if spec.dtype == tf.string:
            batch = [self._check_encoded(v, k, signature_name) for k, v in enumerate(values)]
            groups = [[k] for k in range(len(batch))]  # encoded images may differ in size
        else:
            batch = [self._check_pixels(v, k) for k, v in enumerate(values)]
            groups = _group_by_shape(batch)
        outputs = [None] * len(batch)
        fn = self.signatures[signature_name]
        for group in groups:
            if spec.dtype == tf.string:
                tensor = tf.constant([batch[k] for k in group], tf.string)
            else:
                tensor = tf.constant(np.stack([batch[k] for k in group]), tf.uint8)
            with self._slots:
                try:
                    result = fn(**{input_name: tensor})
                except tf.errors.InvalidArgumentError as error:
                    raise RequestError(f"The model rejected the input: {error.message}") from None
            for j, k in enumerate(group):
                outputs[k] = {key: value[j].numpy().tolist() for key, value in result.items()}
        return _format(outputs, rows=has_rows)

    def _check_pixels(self, value, index):
        if isinstance(value, dict):
            raise RequestError(
                f"Image {index}: serving_default takes uint8 pixel arrays; send base64 images "
                'as {"b64": ...} to signature "serve_bytes".'
            )
        try:
            array = np.asarray(value)
        except ValueError:
            raise RequestError(f"Image {index} is not a rectangular array of pixels.") from None
        if array.dtype == object or array.ndim != 3 or array.shape[-1] != self.channels:
            raise RequestError(
                f"Image {index} must be [height, width, {self.channels}] uint8 pixels, "
                f"received shape {list(array.shape)}."
            )
        if array.dtype.kind not in "iu":
            raise RequestError(
                f"Image {index} has dtype {array.dtype.name}; pixels must be integers in [0, 255] (uint8)."
            )
        if array.size and (array.min() < 0 or array.max() > 255):
            raise RequestError(
                f"Image {index} has pixels outside [0, 255]; the input dtype is uint8."
            )
        self._check_size(array.shape[0], array.shape[1], index)
        return array.astype(np.uint8)

    def _check_encoded(self, value, index, signature_name):
        if not (
            isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)
        ):
            raise RequestError(f'Entry {index} of {signature_name} must be {{"b64": "<base64>"}}.')
        try:
            data = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"Entry {index} is not valid base64.") from None
        image_bytes = data
        if signature_name == "serve_examples":
            try:
                example = tf.train.Example.FromString(data)
                image_bytes = example.features.feature[IMAGE_KEY].bytes_list.value[0]
            except Exception:  # protobuf raises its own DecodeError; any failure is the client's
                raise RequestError(
                    f"Entry {index} is not a serialized tf.train.Example with {IMAGE_KEY!r}."
                ) from None
        try:
            with Image.open(io.BytesIO(image_bytes)) as image:  # reads the header only
                width, height = image.size
                kind = image.format
        except Exception:  # PIL raises several error types for unreadable data
            raise RequestError(f"Entry {index} is not a PNG or JPEG image.") from None
        if kind not in ("PNG", "JPEG"):
            raise RequestError(f"Entry {index} is a {kind} image; PNG or JPEG are accepted.")
        self._check_size(height, width, index)
        return data

    def _check_size(self, height, width, index):
        if height < 1 or width < 1 or height * width > self.max_pixels:
            raise RequestError(
                f"Image {index} is {height}x{width}; height * width must be in [1, {self.max_pixels}]."
            )


def _all_b64(items):
    values = items
    if isinstance(items, dict) and len(items) == 1:
        (values,) = items.values()
    if not isinstance(values, list) or not values:
        return False
    for value in values:
        if isinstance(value, dict) and len(value) == 1 and "b64" not in value:
            (value,) = value.values()
        if not (isinstance(value, dict) and "b64" in value):
            return False
    return True


def _unwrap_named(items, input_name, rows):
    """Strips the optional input name: rows `[{name: v}, ...]`, columns `{name: [...]}`."""
    if rows:
        if not isinstance(items, list):
            raise RequestError('"instances" must be a list.')
        unwrapped = []
        for item in items:
            if isinstance(item, dict) and "b64" not in item:
                if set(item) != {input_name}:
                    raise RequestError(
                        f"Each instance must have the single input {input_name!r}, received keys {sorted(item)}."
                    )
                item = item[input_name]
            unwrapped.append(item)
        return unwrapped
    if isinstance(items, dict) and "b64" not in items:
        if set(items) != {input_name}:
            raise RequestError(
                f'"inputs" must have the single input {input_name!r}, received keys {sorted(items)}.'
            )
        return items[input_name]
    return items


def _group_by_shape(arrays):
    groups = {}
    for k, array in enumerate(arrays):
        groups.setdefault(array.shape, []).append(k)
    return list(groups.values())


def _format(outputs, rows):
    keys = list(outputs[0])
    if rows:
        if len(keys) == 1:
            return {"predictions": [out[keys[0]] for out in outputs]}
        return {"predictions": outputs}
    columns = {key: [out[key] for out in outputs] for key in keys}
    return {"outputs": columns[keys[0]] if len(keys) == 1 else columns}


class _Handler(BaseHTTPRequestHandler):
    server_version = "keras_fusionseg"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002  (stdlib signature)
        if self.server.verbose:
            super().log_message(format, *args)

    def _reply(self, code, payload):
        body = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _discard(self, length, chunk=1 << 20):
        while length > 0:
            data = self.rfile.read(min(chunk, length))
            if not data:
                break
            length -= len(data)

    def _route(self):
        match = _ROUTE.match(self.path)
        service = self.server.service
        if not match:
            self._reply(404, {"error": f"Unknown path {self.path!r}."})
            return None
        if match.group(1) != service.model_name:
            self._reply(404, {"error": f"Servable not found for request: {match.group(1)!r}."})
            return None
        if match.group(2) not in (None, "1"):
            self._reply(
                404, {"error": f"Version {match.group(2)} of {service.model_name!r} not found."}
            )
            return None
        return match

    def do_GET(self):  # noqa: N802  (stdlib naming)
        match = self._route()
        if match is None:
            return
        if match.group(3):
            self._reply(405, {"error": "Use POST for :predict."})
        elif match.group(4):
            self._reply(200, self.server.service.metadata())
        else:
            self._reply(200, self.server.service.status())

    def do_POST(self):  # noqa: N802  (stdlib naming)
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self._reply(411, {"error": "A Content-Length header is required."})
            return
        if length > self.server.max_body_bytes:
            self.close_connection = True
            if length <= 16 * self.server.max_body_bytes:
                self._discard(length)  # so that the client can read the answer, not a reset
            self._reply(
                400,
                {
                    "error": f"The request body is {length} bytes; at most {self.server.max_body_bytes}."
                },
            )
            return
        body = self.rfile.read(length)
        match = self._route()
        if match is None:
            return
        if not match.group(3):
            self._reply(405, {"error": "POST to /v1/models/<name>:predict."})
            return
        try:
            self._reply(200, self.server.service.predict(body))
        except RequestError as error:
            self._reply(400, {"error": str(error)})
        except Exception as error:  # the server must keep serving whatever happens
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})


def make_server(service, host="127.0.0.1", port=8501, *, max_body_bytes=64 << 20, verbose=False):
    """A `ThreadingHTTPServer` answering for `service` (call `serve_forever()` on it)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    server.service = service
    server.max_body_bytes = int(max_body_bytes)
    server.verbose = verbose
    return server


@contextlib.contextmanager
def running_server(service, host="127.0.0.1", port=0, **options):
    """Serves in a background thread; yields the base URL; always shuts down on exit."""
    server = make_server(service, host, port, **options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield f"http://{server.server_address[0]}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
