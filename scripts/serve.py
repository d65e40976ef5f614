"""Serves an exported SavedModel over HTTP with the TF Serving REST predict API.

    pip install -e ".[serve]"     # waitress
    python scripts/serve.py --saved_model=exported/m/saved_model --model_name=shapes
    python scripts/serve.py --preset=deeplabv3plus_mobilenetv2_camvid   # /v1/models/<preset>
    curl localhost:8501/v1/models/shapes
    printf '{"instances": [{"b64": "%%s"}]}' "$(base64 -w0 image.png)" > request.json
    curl -d @request.json localhost:8501/v1/models/shapes:predict
    # or open http://localhost:8501/ in a browser: the demo page (--nodemo_page: off)

The demo page at `/` lets a person pick or drop an image and see the colour overlay, the
legend and the share of the image each class covers, through the same predict API; it needs
no external assets. Class names and colours come from the preset, else from --dataset, the
export's `export_config.json` or the workdir's `config.json`, else generic ("class k" for
--num_classes or 256 ids, PASCAL VOC colours).

--preset serves a preset shipped with the package: it is exported first (whole-image size
policy, as `scripts/export.py --preset`) to a temporary folder removed when the server stops.
The model runs once before the server reports itself ready; a model that cannot run here
stops the script with TensorFlow's error. Binds to 127.0.0.1 unless --host says otherwise
(`--host=::1` for IPv6 loopback). TF Serving serves the same SavedModel with no client change
(`tensorflow/serving` image, `--model_base_path=/models/<name>` holding `1/` = the SavedModel).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

_SAVED_MODEL = flags.DEFINE_string("saved_model", None, "SavedModel directory.")
_PRESET = flags.DEFINE_string(
    "preset",
    None,
    "A preset name (keras_fusionseg.models.list_presets()) instead of --saved_model.",
)
flags.mark_flags_as_mutual_exclusive(["saved_model", "preset"], required=True)
_MODEL_NAME = flags.DEFINE_string(
    "model_name", None, "The <name> in /v1/models/<name> (default: the preset, or 'segmenter')."
)
_DEMO_PAGE = flags.DEFINE_bool("demo_page", True, "Serve the demo page at /.")
_DATASET = flags.DEFINE_string(
    "dataset", None, "Registered dataset whose class names and colours the demo page shows."
)
_NUM_CLASSES = flags.DEFINE_integer(
    "num_classes", None, "Without a known dataset: the page's generic class names."
)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to bind (loopback by default).")
_PORT = flags.DEFINE_integer("port", 8501, "Port (8501 is TF Serving's REST port; 0 = any).")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 2048 * 2048, "Largest height*width accepted.")
_MAX_BATCH = flags.DEFINE_integer("max_batch", 16, "Most images per request.")
_MAX_BODY_MB = flags.DEFINE_float("max_body_mb", 64.0, "Largest request body (larger: 413).")
_THREADS = flags.DEFINE_integer("threads", 4, "Worker threads answering requests.")
_MAX_CONCURRENT = flags.DEFINE_integer(
    "max_concurrent", 2, "Requests decoded and predicted at once (bounds memory)."
)
_CONNECTION_LIMIT = flags.DEFINE_integer(
    "connection_limit", 500, "Most open connections; more wait in the listen backlog."
)
_BACKLOG = flags.DEFINE_integer("backlog", 1024, "Listen backlog.")
_CHANNEL_TIMEOUT = flags.DEFINE_integer(
    "channel_timeout", 30, "Seconds of client inactivity before a connection is closed."
)
_STOP_AFTER = flags.DEFINE_float(
    "stop_after_seconds", 0, "Stop by itself after this many seconds (0 = run until Ctrl-C)."
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="preset_saved_model_") as scratch:
        saved_model_dir, labels = _SAVED_MODEL.value, None
        if _PRESET.value:
            saved_model_dir, labels = export_preset(_PRESET.value, scratch)
        serve(saved_model_dir, labels)


def export_preset(preset, folder):
    """Exports preset `preset` as a SavedModel in `folder`; returns its path and the preset's
    (class names, palette)."""
    from keras_fusionseg import export
    from keras_fusionseg.models import presets

    model, metadata = presets.load_checkpoint_or_preset(preset=preset)
    path = os.path.join(folder, "saved_model")
    export.export_saved_model(model, path)
    return path, presets.class_names_and_palette(metadata)


def page_labels(saved_model_dir, labels=None):
    """(class names, palette) for the demo page: --dataset first, then `labels` (a preset's),
    then the dataset recorded next to the SavedModel, else generic ones."""
    from keras_fusionseg.export import predict_files

    if _DATASET.value:
        return predict_files.class_names_and_palette(_DATASET.value)
    if labels is not None:
        return labels
    dataset = predict_files.dataset_name_for(saved_model_dir)
    if dataset:
        try:
            return predict_files.class_names_and_palette(dataset)
        except (KeyError, ValueError) as error:
            logging.warning("No class names for dataset %r (%s): generic ones.", dataset, error)
    return predict_files.class_names_and_palette(None, _NUM_CLASSES.value)


def serve(saved_model_dir, labels=None):
    import threading

    from keras_fusionseg.export.serving import DemoPage, PredictionService, make_server

    model_name = _MODEL_NAME.value
    if model_name is None:
        model_name = os.path.basename(os.path.normpath(_PRESET.value or "segmenter"))
    if _HOST.value not in ("127.0.0.1", "localhost", "::1"):
        logging.warning("Binding to %s: this server has no authentication or TLS.", _HOST.value)
    service = PredictionService(
        saved_model_dir,
        model_name,
        max_pixels=_MAX_PIXELS.value,
        max_batch=_MAX_BATCH.value,
        max_concurrent=_MAX_CONCURRENT.value,
    )
    demo = DemoPage(*page_labels(saved_model_dir, labels)) if _DEMO_PAGE.value else None
    server = make_server(
        service,
        _HOST.value,
        _PORT.value,
        max_body_bytes=int(_MAX_BODY_MB.value * 2**20),
        threads=_THREADS.value,
        backlog=_BACKLOG.value,
        connection_limit=_CONNECTION_LIMIT.value,
        channel_timeout=_CHANNEL_TIMEOUT.value,
        verbose=True,
        demo=demo,
    )
    print(f"Serving {model_name!r} at {server.url}/v1/models/{model_name}", flush=True)
    if demo is not None:
        print(f"Demo page: {server.url}/", flush=True)
    if _STOP_AFTER.value > 0:
        threading.Timer(_STOP_AFTER.value, server.shutdown).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    app.run(main)
