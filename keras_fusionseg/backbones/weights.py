"""Loads pretrained backbone weights from local Keras weight files, matched by layer name.

Reads both the legacy Keras `.h5` layout (Keras Applications' ImageNet files: root attribute
`layer_names`, one group per layer with `weight_names`; also a whole-model `.h5` with a
`model_weights` group) and the Keras 3 `.weights.h5` layout (`layers/<...>/vars/<i>`, the
layer name in the `vars` group's `name` attribute). Keras' own `load_weights` can skip
mismatching layers but cannot report them, and `.weights.h5` loads by position, not by name:
hence this reader (h5py is a Keras dependency).

Tensors are grouped by owner, i.e. the variable's path without its last component
(`conv1_conv`, `entry_flow_conv1_1/bn`), so composite layers match sub-layer by sub-layer.
Layers that Keras Applications models have beyond our backbones are skipped by default
(`IGNORED_LAYERS`: MobileNetV2's final 1x1 conv to 1280 channels and its BN, which DeepLab
does not use, and the ImageNet classifiers).
"""

import os

import h5py
import numpy as np

IGNORED_LAYERS = ("Conv_1", "Conv_1_bn", "predictions", "Logits", "probs")


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_legacy(root):
    """owner -> arrays from the legacy h5 layout (weights in `weight_names` order)."""
    tensors = {}
    for layer_name in (_decode(n) for n in root.attrs["layer_names"]):
        group = root[layer_name]
        for weight_name in (_decode(n) for n in group.attrs.get("weight_names", [])):
            parts = weight_name.split(":")[0].split("/")
            owner = "/".join([layer_name, *parts[1:-1]])
            tensors.setdefault(owner, []).append(np.asarray(group[weight_name]))
    return tensors


def _read_keras3(group, prefix="", tensors=None):
    """owner -> arrays from the Keras 3 `.weights.h5` layout (`vars/0`, `vars/1`, ...)."""
    tensors = {} if tensors is None else tensors
    for key in group:
        child = group[key]
        if key == "vars" or not isinstance(child, h5py.Group):
            continue
        path = prefix
        if "vars" in child:
            path = prefix + _decode(child["vars"].attrs.get("name", key))
            variables = child["vars"]
            arrays = [np.asarray(variables[i]) for i in sorted(variables, key=int)]
            if arrays:
                tensors[path] = arrays
            path += "/"
        _read_keras3(child, path, tensors)
    return tensors


def read_weight_file(path):
    """Reads a Keras weight file into a dict owner -> list of arrays.

    Raises:
        ValueError: naming the file when it is missing or not a Keras HDF5 weight file.
    """
    if not os.path.isfile(path):
        raise ValueError(f"Backbone weight file {str(path)!r} does not exist.")
    try:
        with h5py.File(path, "r") as file:
            root = file["model_weights"] if "model_weights" in file else file
            if "layer_names" in root.attrs:
                return _read_legacy(root)
            if "layers" in file:
                return _read_keras3(file["layers"])
    except OSError as error:
        raise ValueError(f"Backbone weight file {str(path)!r} is not HDF5: {error}") from error
    raise ValueError(
        f"Backbone weight file {str(path)!r} is neither a legacy Keras `.h5` weight file "
        "(no `layer_names` attribute) nor a Keras 3 `.weights.h5` file (no `layers` group)."
    )


def _model_variables(model):
    """owner -> variables of `model`, in each layer's `weights` order."""
    owners = {}
    for variable in model.weights:
        owner = variable.path.rsplit("/", 1)[0]
        owners.setdefault(owner, []).append(variable)
    return owners


def _shapes(items):
    return [tuple(item.shape) for item in items]


def _is_ignored(owner, ignore):
    return owner.split("/")[0] in ignore


def load_backbone_weights(model, path, *, strict=True, ignore=IGNORED_LAYERS):
    """Loads a local weight file into `model` by layer name.

    Args:
        model: a backbone (or any Keras model) whose layer names match the file's.
        path: str, a legacy Keras `.h5` file (e.g. Keras Applications' ImageNet weights)
            or a Keras 3 `.weights.h5` file.
        strict: bool; if True (default) any missing, mis-shaped or extra tensor raises
            before anything is assigned; if False the fitting tensors are loaded and the
            others reported.
        ignore: layer names in the file that are never counted as extra (by default the
            parts of Keras Applications models our backbones leave out).

    Returns:
        A dict with `loaded` (number of layers assigned), `missing`, `mismatched` and
        `extra` (lists of layer paths).

    Raises:
        ValueError: naming the file and listing the missing / mis-shaped / extra tensors.
    """
    stored = read_weight_file(path)
    ours = _model_variables(model)
    missing = [owner for owner in ours if owner not in stored]
    extra = [owner for owner in stored if owner not in ours and not _is_ignored(owner, ignore)]
    mismatched = [
        f"{owner}: model {_shapes(variables)} vs file {_shapes(stored[owner])}"
        for owner, variables in ours.items()
        if owner in stored and _shapes(variables) != _shapes(stored[owner])
    ]
    report = {"missing": missing, "mismatched": mismatched, "extra": extra}
    if strict and (missing or mismatched or extra):
        lines = [
            f"{label} ({len(items)}): "
            + ", ".join(items[:20])
            + (" ..." if len(items) > 20 else "")
            for label, items in (
                ("missing from the file", missing),
                ("mis-shaped", mismatched),
                ("extra in the file", extra),
            )
            if items
        ]
        raise ValueError(
            f"Backbone weight file {str(path)!r} does not fit model {model.name!r}:\n"
            + "\n".join(lines)
        )
    loaded = 0
    for owner, variables in ours.items():
        arrays = stored.get(owner)
        if arrays is None or _shapes(variables) != _shapes(arrays):
            continue
        for variable, array in zip(variables, arrays, strict=True):
            variable.assign(array.astype(variable.dtype))
        loaded += 1
    return {"loaded": loaded, **report}
