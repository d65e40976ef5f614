"""`SegmentationModel`: a functional model that keeps how it was built in its config.

Attributes set on a functional `keras.Model` after it is made are lost when it is saved to a
`.keras` file. Every registered model is therefore a `SegmentationModel`: a `keras.Model`
made from (inputs, outputs) like any functional model, whose config holds three more entries
that `.keras` files, `keras.saving.serialize_keras_object` and `clone_model` bring back:

- `build_arguments`: how `models.build` made it (`BUILD_KEYS`): registered model name,
  backbone (its name, or the name and class of a backbone object) and options, output
  stride, num_classes, input shape, aux_outputs and the model's options, as JSON values
  (tuples become lists; an array or basis object becomes a placeholder string);
- `loss_spec`: output name -> (kind, weight), what training does with each output;
- `dataset`: None, or what training records about its data (`record_dataset`).

keras-hub's Backbone and Task classes keep their constructor arguments in `get_config` and
rebuild the graph from them. Here the graph stays in the config (so models on a backbone
object, DUpsampling bases given as arrays, and checkpoints saved before this class load as
before) and the build arguments come along as a description; `rebuild_kwargs(model)`
turns them back into `models.build` arguments when the backbone was built by name.

`describe_model` answers "what is this model, and which dataset was it trained on" for every
script: from a model's own config, else a preset's metadata, else the `config.json` of the
training workdir (or the `export_config.json` of an export) next to the model's path.
"""

import json
import os
import zipfile

import keras
import numpy as np

from keras_fusionseg.layers.common import PACKAGE

SEGMENTATION = "segmentation"  # per-pixel logits (any resolution); label resized by nearest
PRESENCE = "presence"  # per-image class-presence logits (EncNet SE-loss), binary CE
DEFAULT_LOSS_SPEC = {"logits": (SEGMENTATION, 1.0)}

BUILD_KEYS = (
    "model",
    "num_classes",
    "input_shape",
    "backbone",
    "backbone_options",
    "output_stride",
    "aux_outputs",
    "options",
)
DATASET_KEYS = ("name", "data_dir", "num_classes", "class_names", "ignore_label")
WORKDIR_CONFIG = "config.json"
EXPORT_CONFIG = "export_config.json"


def jsonable(value):
    """`value` as JSON data: tuples -> lists, numpy scalars -> numbers, paths -> str; other
    objects (arrays, a `DUpsamplingBasis`) -> a placeholder string naming their type."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return f"<{type(value).__name__}>"


def _loss_spec(spec):
    """{name: (kind, float weight)} from a loss_spec or its JSON form (lists)."""
    if spec is None:
        return dict(DEFAULT_LOSS_SPEC)
    return {str(name): (str(kind), float(weight)) for name, (kind, weight) in spec.items()}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SegmentationModel(keras.Model):
    """A functional segmentation model that records how it was built (see the module doc).

    Args:
        *args, **kwargs: `keras.Model(inputs, outputs, name=...)` arguments.
        build_arguments: dict of `BUILD_KEYS` (missing keys are None), or None.
        loss_spec: dict output name -> (kind, weight); None for `{"logits": (SEGMENTATION,
            1.0)}`.
        dataset: dict of what the model was trained on (`DATASET_KEYS`), or None.
    """

    def __init__(self, *args, build_arguments=None, loss_spec=None, dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.build_arguments = build_arguments
        self.loss_spec = loss_spec
        self.dataset = dataset

    @property
    def build_arguments(self):
        return self._build_arguments

    @build_arguments.setter
    def build_arguments(self, config):
        config = jsonable(dict(config or {}))
        unknown = sorted(set(config) - set(BUILD_KEYS))
        if unknown:
            raise ValueError(f"Unknown build_arguments {unknown}; known: {list(BUILD_KEYS)}.")
        self._build_arguments = {key: config.get(key) for key in BUILD_KEYS}

    @property
    def loss_spec(self):
        return self._loss_spec

    @loss_spec.setter
    def loss_spec(self, spec):
        self._loss_spec = _loss_spec(spec)

    @property
    def dataset(self):
        return self._dataset

    @dataset.setter
    def dataset(self, dataset):
        self._dataset = None if dataset is None else jsonable(dict(dataset))

    @property
    def output_stride(self):
        """The backbone's output stride recorded at build time (None when unknown)."""
        return self._build_arguments["output_stride"]

    def get_config(self):
        # The functional graph (as for any functional model) plus the description.
        return {
            **super().get_config(),
            "build_arguments": dict(self._build_arguments),
            "loss_spec": {name: list(entry) for name, entry in self._loss_spec.items()},
            "dataset": None if self._dataset is None else dict(self._dataset),
        }


def record_dataset(model, name, **fields):
    """Records in `model`'s config which dataset it is trained on (training calls this).

    Args:
        model: a `SegmentationModel` (every `models.build` result).
        name: str, the dataset's registered name (or a folder source name).
        **fields: more of `DATASET_KEYS` (data_dir, num_classes, class_names, ignore_label).
    """
    if not isinstance(model, SegmentationModel):
        raise ValueError(
            f"Only a SegmentationModel records its dataset, received {type(model).__name__}."
        )
    unknown = sorted(set(fields) - set(DATASET_KEYS))
    if unknown:
        raise ValueError(f"Unknown dataset fields {unknown}; known: {list(DATASET_KEYS)}.")
    model.dataset = {"name": name, **fields}


def lists_to_tuples(value):
    """JSON data with every list turned into a tuple (configs and options use tuples)."""
    if isinstance(value, dict):
        return {key: lists_to_tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(lists_to_tuples(item) for item in value)
    return value


def rebuild_kwargs(model):
    """`models.build` keyword arguments that rebuild `model`'s architecture (JSON lists as
    tuples), from its recorded `build_arguments`.

    Raises:
        ValueError: the model records no build, was built on a backbone object, or has an
            option that was an object (e.g. a DUpsampling basis array).
    """
    config = model.build_arguments if isinstance(model, SegmentationModel) else {}
    if not config or config.get("model") is None:
        raise ValueError(f"Model {model.name!r} records no `models.build` arguments.")
    if not isinstance(config["backbone"], str):
        raise ValueError(
            f"Model {model.name!r} was built on a backbone object ({config['backbone']}); "
            "pass that backbone to `models.build` yourself."
        )
    placeholders = sorted(
        key
        for key, value in (config.get("options") or {}).items()
        if isinstance(value, str) and value.startswith("<")
    )
    if placeholders:
        raise ValueError(
            f"Model {model.name!r} was built with object options {placeholders} that its "
            "config does not hold; pass them yourself."
        )
    return {
        "name": config["model"],
        "num_classes": config["num_classes"],
        "input_shape": tuple(config["input_shape"]),
        "backbone": config["backbone"],
        "backbone_options": lists_to_tuples(config["backbone_options"] or {}),
        "output_stride": config["output_stride"],
        "aux_outputs": config["aux_outputs"],
        **lists_to_tuples(config["options"] or {}),
    }


def _config_files_near(path):
    """Training `config.json` / export `export_config.json` files at `path`, its folder and
    the folder above (a workdir, its `checkpoints/x.keras`, an export folder), nearest
    first."""
    path = os.path.abspath(os.fspath(path))
    folders = [path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    for folder in folders:
        for name in (WORKDIR_CONFIG, EXPORT_CONFIG):
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                yield candidate


def _from_training_config(config):
    """(build description, dataset) of a training config (workdir `config.json` or a
    preset's `training.config`)."""
    model = config.get("model") or {}
    data = config.get("data") or {}
    build = {
        "model": model.get("name") or None,
        "backbone": model.get("backbone") or None,
        "backbone_options": model.get("backbone_options"),
        "output_stride": model.get("output_stride"),
        "aux_outputs": model.get("aux_outputs"),
        "options": model.get("options"),
    }
    dataset = {
        "name": data.get("name") or None,
        "data_dir": data.get("data_dir") or None,
        "num_classes": data.get("num_classes") or None,
    }
    return build, dataset if dataset["name"] else None


def _archived_config(path):
    """The `SegmentationModel` config inside a `.keras` file (read without building the
    model), or None for another file or model class."""
    path = os.fspath(path)
    if not (path.endswith(".keras") and zipfile.is_zipfile(path)):
        return None
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            return None
        config = json.loads(archive.read("config.json"))
    if config.get("class_name") != SegmentationModel.__name__:
        return None
    return config.get("config") or {}


def describe_model(model=None, *, path=None, metadata=None):
    """What a model is and which dataset it was trained on, from the best source at hand.

    Sources, first found wins (per part): the model's own config (a `SegmentationModel`, or
    the config inside the `.keras` file at `path` when no model is given: build arguments,
    and the dataset if training recorded it), a preset's `metadata`, the
    training workdir's `config.json` or an export's `export_config.json` at `path`, its
    folder or the folder above (checkpoints saved before models recorded themselves).

    Args:
        model: a loaded `keras.Model`, or None (e.g. for a SavedModel or TFLite file).
        path: where the model was loaded from (a `.keras` file, workdir or export folder).
        metadata: a preset's metadata dict (`models.load_preset_metadata`), or None.

    Returns:
        dict: `BUILD_KEYS` (None where unknown), `loss_spec` (None unless the model holds
        it), `dataset` (dict with at least `name` and `data_dir`, or None) and `sources`
        (where the description and the dataset came from).
    """
    info = {key: None for key in BUILD_KEYS}
    info.update(loss_spec=None, dataset=None, sources={"build": None, "dataset": None})
    if isinstance(model, SegmentationModel):
        if model.build_arguments.get("model") is not None:
            info.update(model.build_arguments)
            info["sources"]["build"] = "model"
        info["loss_spec"] = dict(model.loss_spec)
        if model.dataset:
            info["dataset"] = dict(model.dataset)
            info["sources"]["dataset"] = "model"
    candidates = []
    if model is None and path is not None:
        archived = _archived_config(path)
        if archived is not None:
            build = archived.get("build_arguments") or {}
            loss_spec = archived.get("loss_spec")
            info["loss_spec"] = None if loss_spec is None else _loss_spec(loss_spec)
            candidates.append(("model", build, archived.get("dataset")))
    if metadata is not None:
        training = (metadata.get("training") or {}).get("config") or {}
        build, dataset = _from_training_config(training)
        dataset = dataset or {"name": (metadata.get("dataset") or {}).get("name")}
        candidates.append(("preset", build, dataset if dataset.get("name") else None))
    if path is not None:
        for file in _config_files_near(path):
            with open(file) as f:
                config = json.load(f)
            if os.path.basename(file) == EXPORT_CONFIG:
                build, dataset = {}, {"name": config.get("dataset")}
                dataset = dataset if dataset["name"] else None
            else:
                build, dataset = _from_training_config(config)
            candidates.append((file, build, dataset))
    for source, build, dataset in candidates:
        if info["sources"]["build"] is None and build.get("model"):
            info.update({key: build[key] for key in BUILD_KEYS if build.get(key) is not None})
            info["sources"]["build"] = source
        if info["sources"]["dataset"] is None and dataset:
            info["dataset"] = dataset
            info["sources"]["dataset"] = source
    if info["dataset"] is not None:
        info["dataset"] = {"name": None, "data_dir": None, **info["dataset"]}
    if info["num_classes"] is None and model is not None:
        info["num_classes"] = _num_classes(model)
    return info


def _num_classes(model):
    """Channels of the model's (logits) output, None when not static or not a functional model."""
    try:
        output = model.output
    except (AttributeError, ValueError):
        return None
    if isinstance(output, dict):
        output = output.get("logits")
    channels = getattr(output, "shape", (None,))[-1]
    return channels if isinstance(channels, int) else None
