"""The TF Serving REST predict API for an exported SavedModel, as a WSGI application.

Clients written for TF Serving work unchanged:

- `GET  /v1/models/<name>` -> model status; `GET /v1/models/<name>/metadata` -> signatures;
- `POST /v1/models/<name>:predict` with `{"signature_name": ..., "instances": [...]}` (row
  format, answered with `{"predictions": [...]}`) or `{"inputs": ...}` (columnar, answered
  with `{"outputs": ...}`); binary strings are `{"b64": "..."}`. A request without
  `signature_name` whose images are all `{"b64": ...}` goes to `serve_bytes`.

A malformed request, a wrong dtype or an oversized image is answered with 400 and
`{"error": "..."}` and the server keeps serving.

With `demo=DemoPage(...)` (as `scripts/serve.py` does) the application also serves a demo
page at `/`: a person picks or drops an image and sees the colour overlay, the class legend and
the area of each class, computed from this same predict API (static files in `static/`, no
external assets; `GET /demo/config.json` gives the page the class names and palette).

Three layers, each usable alone: `PredictionService` turns a request body into a response
(no HTTP), `RestApplication` is the WSGI routing around it, and `make_server` /
`running_server` put it on waitress (the optional `serve` extra). Waitress was chosen because
it reads each whole request (headers and body, spooled to a temporary file past 512 KB) in
its I/O thread before a worker sees it: slow or stalled clients never hold a worker, and the
listen backlog, connection count, inactivity timeout, header and body limits and the number
of workers are its settings. It is pure Python with no dependencies, and a TensorFlow call is
blocking anyway, which suits WSGI's thread-per-request model.
"""

import base64
import binascii
import contextlib
import io
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from http import HTTPStatus

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_fusionseg.checks import check_positive_int
from keras_fusionseg.export.saved_model import IMAGE_KEY

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_ROUTE = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(\d+))?(?::(predict)|/(metadata))?$")


class RequestError(ValueError):
    """A client error, answered with HTTP 400."""


class PredictionService:
    """Loads a SavedModel and answers TF Serving REST requests (transport-independent).

    The model runs once on a small blank image before the service exists, so a model that
    cannot run on this machine fails here, with TensorFlow's error, rather than on the first
    client request after the server has reported itself AVAILABLE.

    Args:
        saved_model_dir: str, a SavedModel written by `export_saved_model`.
        model_name: str, the `<name>` in the URLs.
        max_pixels: int, largest height * width accepted per image.
        max_batch: int, most images per request.
        max_concurrent: int, requests decoded and predicted at once. JSON pixel arrays take
            tens of bytes of Python objects per pixel while parsed, so this bounds memory.
        warmup: bool, run the model once before returning (see above).
    """

    def __init__(
        self,
        saved_model_dir,
        model_name,
        *,
        max_pixels=2048 * 2048,
        max_batch=16,
        max_concurrent=2,
        warmup=True,
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
        self.input_name, spec = self._input_spec("serving_default")
        self.channels = spec.shape[-1]
        if warmup:
            self._warm_up(saved_model_dir)

    def _warm_up(self, saved_model_dir):
        image = tf.zeros((1, 32, 32, self.channels or 3), tf.uint8)
        try:
            outputs = self.signatures["serving_default"](**{self.input_name: image})
            for value in outputs.values():
                value.numpy()
        except Exception as error:  # any failure means the model cannot serve on this machine
            message = getattr(error, "message", None) or str(error)
            raise RuntimeError(
                f"SavedModel {saved_model_dir!r} cannot run on this machine (warm-up predict on a "
                f"32x32 image failed): {type(error).__name__}: {message}"
            ) from error

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
        with self._slots:
            return self._predict(body)

    def _predict(self, body):
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(f"The request body is not valid JSON: {error}") from None
        except RecursionError:
            raise RequestError("The request body is nested too deeply.") from None
        if not isinstance(request, dict):
            raise RequestError("The request body must be a JSON object.")
        has_rows, has_columns = "instances" in request, "inputs" in request
        if has_rows == has_columns:
            raise RequestError('The request must have exactly one of "instances" or "inputs".')
        items = request["instances"] if has_rows else request["inputs"]
        signature_name = request.get("signature_name")
        if signature_name is not None and not isinstance(signature_name, str):
            raise RequestError('"signature_name" must be a string.')
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
        except (ValueError, TypeError, OverflowError, RecursionError):
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


# --- the demo page ------------------------------------------------------------------------------

_PAGE_FILES = {  # URL path -> (file in static/, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo/demo.css": ("demo.css", "text/css; charset=utf-8"),
}
# The page may load only this server's files: no external assets, no inline script, no framing.
_PAGE_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-cache"),
]
PAGE_MAX_PIXELS = 1 << 20


class DemoPage:
    """The browser demo that `RestApplication` serves at `/` (files in `static/`).

    The page reads `GET /demo/config.json` (model name, class names, palette, limits), sends
    the chosen image to `POST /v1/models/<name>:predict` as `{"instances": [{"b64": ...}]}`
    and draws the overlay as `visualize.overlay` does (black classes transparent), the legend
    of the classes present and the share of the image's pixels each covers.

    Args:
        class_names: sequence of names, index = class id (ids past it are shown as "class k").
        palette: (num_colours, 3) colours in [0, 255]; ids past it are drawn transparent.
        alpha: float in [0, 1], the initial colour opacity (a slider on the page changes it).
        page_max_pixels: int, the page shrinks larger images to about this many pixels
            before sending them (also capped by the service's `max_pixels`).
    """

    def __init__(self, class_names, palette, *, alpha=0.5, page_max_pixels=PAGE_MAX_PIXELS):
        palette = np.asarray(palette)
        if (
            palette.ndim != 2
            or palette.shape[1] != 3
            or not len(palette)
            or palette.dtype.kind not in "iu"
            or palette.min() < 0
            or palette.max() > 255
        ):
            raise ValueError(
                f"`palette` must be (num_colours, 3) integers in [0, 255], received shape "
                f"{palette.shape} of {palette.dtype}."
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], received {alpha!r}.")
        if page_max_pixels < 1:
            raise ValueError(f"`page_max_pixels` must be positive, received {page_max_pixels!r}.")
        self.class_names = [str(name) for name in class_names]
        self.palette = palette.astype(int).tolist()
        self.alpha = float(alpha)
        self.page_max_pixels = int(page_max_pixels)
        self.files = {}
        for route, (name, kind) in _PAGE_FILES.items():
            path = os.path.join(STATIC_DIR, name)
            try:
                with open(path, "rb") as f:
                    self.files[route] = (f.read(), kind)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"The demo page file {path!r} is missing: reinstall keras_fusionseg "
                    "(its package data holds export/static/)."
                ) from None

    def config(self, service, max_body_bytes):
        """What the page needs to know, answered at `GET /demo/config.json`."""
        return {
            "model_name": service.model_name,
            "class_names": self.class_names,
            "palette": self.palette,
            "alpha": self.alpha,
            "page_max_pixels": min(self.page_max_pixels, service.max_pixels),
            "max_body_bytes": max_body_bytes,
        }


# --- HTTP ---------------------------------------------------------------------------------------

_LOG = logging.getLogger(__name__)


class RestApplication:
    """The WSGI application: routes TF Serving REST URLs to a `PredictionService`.

    Every API answer, errors included, is JSON (the demo page's files aside). The body limit is checked here too (before
    reading), so the application stays safe behind any WSGI server, not only waitress.

    Args:
        service: a `PredictionService`.
        max_body_bytes: int, largest request body read.
        verbose: bool, log one line per request (method, path, status, milliseconds).
        demo: optional `DemoPage`, served at `/` (its files under `/demo/`); None: `/` is 404.
    """

    def __init__(self, service, *, max_body_bytes=64 << 20, verbose=False, demo=None):
        self.service = service
        self.max_body_bytes = int(max_body_bytes)
        self.verbose = verbose
        self.demo = demo

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        page = self._page(environ)
        if page is not None:
            status, body, headers = page
        else:
            status, payload = self._answer(environ)
            body = json.dumps(payload).encode("utf-8")
            headers = [("Content-Type", "application/json")]
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        if self.verbose:
            _LOG.info(
                "%s %s -> %d (%.0f ms)",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                status,
                1000 * (time.perf_counter() - started),
            )
        return [body]

    def _page(self, environ):
        """`(status, body, headers)` for the demo page's paths, else None (the REST API)."""
        path = environ.get("PATH_INFO", "")
        if self.demo is None or not (path in self.demo.files or path == "/demo/config.json"):
            return None
        if environ.get("REQUEST_METHOD") != "GET":
            body = json.dumps({"error": f"Use GET for {path}."}).encode("utf-8")
            return 405, body, [("Content-Type", "application/json"), ("Allow", "GET")]
        if path == "/demo/config.json":
            config = self.demo.config(self.service, self.max_body_bytes)
            body, kind = json.dumps(config).encode("utf-8"), "application/json"
        else:
            body, kind = self.demo.files[path]
        return 200, body, [("Content-Type", kind), *_PAGE_HEADERS]

    def _answer(self, environ):
        path = environ.get("PATH_INFO", "")
        match = _ROUTE.match(path)
        service = self.service
        if not match:
            return 404, {"error": f"Unknown path {path[:200]!r}."}
        if match.group(1) != service.model_name:
            return 404, {"error": f"Servable not found for request: {match.group(1)[:200]!r}."}
        if match.group(2) not in (None, "1"):
            return 404, {
                "error": f"Version {match.group(2)[:20]} of {service.model_name!r} not found."
            }
        method = environ.get("REQUEST_METHOD")
        if method == "GET":
            if match.group(3):
                return 405, {"error": "Use POST for :predict."}
            return 200, service.metadata() if match.group(4) else service.status()
        if method != "POST":
            return 405, {"error": f"Method {method!r} is not allowed; use GET or POST."}
        if not match.group(3):
            return 405, {"error": "POST to /v1/models/<name>:predict."}
        body = self._read_body(environ)
        if isinstance(body, tuple):
            return body
        try:
            return 200, service.predict(body)
        except RequestError as error:
            return 400, {"error": str(error)}
        except Exception as error:  # the server must keep serving whatever happens
            _LOG.exception("predict failed")
            return 500, {"error": f"{type(error).__name__}: {error}"}

    def _read_body(self, environ):
        """The body bytes, or `(status, payload)` when it must not or cannot be read."""
        declared = environ.get("CONTENT_LENGTH") or ""
        if not declared:
            return 411, {"error": "A Content-Length header (or a chunked body) is required."}
        if not declared.isdigit():
            return 400, {"error": f"Invalid Content-Length {declared[:40]!r}."}
        length = int(declared)
        if length > self.max_body_bytes:
            return 413, {
                "error": f"The request body is {length} bytes; at most {self.max_body_bytes}."
            }
        stream = environ["wsgi.input"]
        parts, remaining = [], length
        while remaining > 0:
            part = stream.read(min(remaining, 1 << 20))
            if not part:
                return 400, {"error": "The request body is shorter than its Content-Length."}
            parts.append(part)
            remaining -= len(part)
        return b"".join(parts)


def _bind(host, port, backlog):
    """A listening TCP socket for `host` (a name, an IPv4 or an IPv6 address) and `port`."""
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as error:
        raise ValueError(f"Cannot resolve the host {host!r} to bind to: {error}.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class Server:
    """A waitress server for a `RestApplication`, stoppable from any thread.

    Built by `make_server`; `url` is its base address, `serve_forever()` blocks until
    `shutdown()` (or Ctrl-C), then closes every connection and worker.
    """

    def __init__(self, waitress_server, sock):
        self._server = waitress_server
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self.host, self.port = sock.getsockname()[:2]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}"

    def serve_forever(self, poll_interval=0.2):
        from waitress import wasyncore

        server = self._server
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=poll_interval, use_poll=True, map=server._map, count=1)
        finally:
            for channel in list(server._map.values()):
                with contextlib.suppress(OSError):
                    channel.close()
            server.task_dispatcher.shutdown(cancel_pending=True, timeout=5)
            self._stopped.set()

    def shutdown(self, timeout=10):
        self._stop.set()
        self._stopped.wait(timeout)


def make_server(
    service,
    host="127.0.0.1",
    port=8501,
    *,
    max_body_bytes=64 << 20,
    threads=4,
    backlog=1024,
    connection_limit=500,
    channel_timeout=30,
    max_header_bytes=64 << 10,
    verbose=False,
    demo=None,
):
    """A waitress HTTP server answering for `service` (call `serve_forever()` on it).

    Waitress buffers each request in its I/O thread and hands it to one of `threads` workers
    only once complete, so stalled clients hold a connection slot, never a worker.

    Args:
        service: a `PredictionService`.
        host: str, interface to bind: "127.0.0.1" (default), "::1", "localhost", or a public
            address (no authentication or TLS: put a proxy in front).
        port: int, 0 picks a free port (see `Server.url`).
        max_body_bytes: int, larger bodies get 413 without being read further (declared
            lengths at once, chunked bodies as soon as they pass the limit).
        threads: int, worker threads running the application.
        backlog: int, the listen queue for connections not yet accepted.
        connection_limit: int, most open connections; beyond it, new ones wait in the backlog.
        channel_timeout: int, seconds of inactivity after which a connection is closed.
        max_header_bytes: int, larger request headers get 431.
        verbose: bool, log each request.
        demo: optional `DemoPage` served at `/` (see `RestApplication`).
    """
    try:
        import waitress
    except ImportError:
        raise ImportError(
            "Serving needs waitress: pip install 'keras_fusionseg[serve]' (or pip install waitress)."
        ) from None
    for name, value in (
        ("max_body_bytes", max_body_bytes),
        ("threads", threads),
        ("backlog", backlog),
        ("connection_limit", connection_limit),
        ("channel_timeout", channel_timeout),
        ("max_header_bytes", max_header_bytes),
    ):
        check_positive_int(name, value)
    application = RestApplication(
        service, max_body_bytes=max_body_bytes, verbose=verbose, demo=demo
    )
    sock = _bind(host, port, backlog)
    try:
        waitress_server = waitress.create_server(
            application,
            sockets=[sock],
            threads=threads,
            backlog=backlog,
            connection_limit=connection_limit,
            channel_timeout=channel_timeout,
            cleanup_interval=max(1, min(10, channel_timeout // 2)),
            # waitress refuses bodies of at least this size; ours may be exactly the limit.
            max_request_body_size=max_body_bytes + 1,
            max_request_header_size=max_header_bytes,
            asyncore_use_poll=True,  # select() cannot watch more than 1024 sockets
            ident="keras_fusionseg",
        )
    except BaseException:
        sock.close()
        raise
    return Server(waitress_server, sock)


@contextlib.contextmanager
def running_server(service, host="127.0.0.1", port=0, **options):
    """Serves in a background thread; yields the base URL; always shuts down on exit."""
    server = make_server(service, host, port, **options)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        thread.join(timeout=10)
