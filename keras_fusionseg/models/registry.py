"""Model registry and `build`: every model is a `SegmentationModel` (a functional `keras.Model`).

A model builder receives a backbone (see `keras_fusionseg.backbones.registry` for the contract)
and returns a model from the backbone's input to logits at input resolution,
(batch, H, W, num_classes), float32, made by `models.heads.model_tail`. With
`aux_outputs=True` the model returns a dict `{"logits": ..., <aux name>: ...}` and
`model.loss_spec` says how training uses each output. `build` records its arguments in the
model (`model.build_arguments`), so a saved model says what it is.
"""

import dataclasses
import warnings
from collections.abc import Callable

import keras

from keras_fusionseg.backbones.registry import build_backbone, check_output_stride
from keras_fusionseg.models.heads import backbone_output_stride, finalize_outputs  # noqa: F401
from keras_fusionseg.models.segmentation_model import (  # noqa: F401  (re-exported)
    PRESENCE,
    SEGMENTATION,
    SegmentationModel,
)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable
    default_backbone: str
    default_output_stride: int
    description: str
    tiny: dict  # `build` arguments for a narrow, fast variant (tests, smoke runs)
    default_backbone_options: dict  # applied whenever the default backbone is built, named or not


_MODELS: dict[str, ModelSpec] = {}


def register_model(
    name,
    *,
    default_backbone,
    default_output_stride,
    tiny,
    default_backbone_options=None,
    description="",
):
    """Decorator registering `builder(backbone, *, num_classes, aux_outputs, **options)`.

    `tiny` holds `build` keyword arguments (backbone, backbone_options, head widths...) for a
    narrow variant that builds and trains in seconds; tests run every model through it.
    `default_backbone_options` (e.g. the deep stem of the FastFCN reference) apply whenever the
    default backbone is built, whether the caller leaves `backbone` out or names it; the
    caller's `backbone_options` override them key by key.
    """

    def decorator(builder):
        if name in _MODELS:
            raise ValueError(f"Model {name!r} is registered twice.")
        summary = description or (builder.__doc__ or "").strip().split("\n")[0]
        _MODELS[name] = ModelSpec(
            name,
            builder,
            default_backbone,
            default_output_stride,
            summary,
            dict(tiny),
            dict(default_backbone_options or {}),
        )
        return builder

    return decorator


def list_models():
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def get_model_spec(name):
    if name not in _MODELS:
        raise ValueError(f"Unknown model {name!r}. Available models: {list_models()}.")
    return _MODELS[name]


def build(
    name,
    *,
    num_classes,
    input_shape=(None, None, 3),
    backbone=None,
    output_stride=None,
    weights=None,
    backbone_weights=None,
    backbone_options=None,
    aux_outputs=False,
    **options,
):
    """Builds a registered segmentation model.

    Args:
        name: str, a name from `list_models()`.
        num_classes: int >= 1.
        input_shape: (H, W, C); H and W may be None.
        backbone: None (the model's default), a backbone name from
            `keras_fusionseg.backbones.list_backbones()`, or a `keras.Model` with
            `pyramid_outputs` (e.g. a keras-hub backbone).
        output_stride: 8, 16 or 32; None for the model's default.
        weights: optional path to a `.weights.h5` file of the whole model.
        backbone_weights: optional path to a pretrained backbone weight file (e.g. the
            Keras Applications ImageNet file), loaded by layer name. If it does not fit
            because of the model's default backbone options (e.g. ExFuse's layer
            rearrangement, which has no ImageNet weights), a warning names those options
            and the layers that fit are loaded; any other misfit raises.
        backbone_options: dict of extra backbone arguments (e.g. `{"multi_grid": (1, 2, 4)}`),
            merged over the model's `default_backbone_options` when the default backbone is
            built (`backbone` None or its name), so naming the default changes nothing.
        aux_outputs: bool, return `{"logits": ..., aux...}` for auxiliary losses.
        **options: model-specific options (see each builder's docstring).

    Returns:
        A `SegmentationModel` (functional) with `loss_spec` and `build_arguments`, which
        `.keras` files keep.
    """
    spec = get_model_spec(name)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"`num_classes` must be an integer >= 1, received {num_classes!r}.")
    if len(tuple(input_shape)) != 3:
        raise ValueError(
            f"`input_shape` must be (height, width, channels), received {input_shape!r}."
        )
    if isinstance(backbone, keras.Model):
        if not hasattr(backbone, "pyramid_outputs"):
            raise ValueError(
                "A `backbone` model must have a `pyramid_outputs` dict of feature maps."
            )
        backbone_model = backbone
    else:
        output_stride = spec.default_output_stride if output_stride is None else output_stride
        check_output_stride(output_stride)
        # Naming the default backbone must give the default network, options included.
        uses_default = backbone is None or backbone == spec.default_backbone
        defaults = spec.default_backbone_options if uses_default else {}
        backbone_model = build_backbone(
            backbone or spec.default_backbone,
            input_shape=input_shape,
            output_stride=output_stride,
            **{**defaults, **(backbone_options or {})},
        )
        if backbone_weights is not None:
            kept = {k: v for k, v in defaults.items() if k not in (backbone_options or {})}
            _load_backbone_weights(name, backbone_model, backbone_weights, kept)
    model = spec.builder(
        backbone_model, num_classes=num_classes, aux_outputs=aux_outputs, **options
    )
    if not isinstance(model, SegmentationModel):  # a builder registered from outside
        model = SegmentationModel(
            model.inputs[0] if len(model.inputs) == 1 else model.inputs,
            model.output,
            name=model.name,
            loss_spec=getattr(model, "loss_spec", None),
        )
    if backbone_model is backbone:
        backbone_record = {"name": backbone.name, "class": type(backbone).__name__}
        backbone_options, output_stride = None, backbone_output_stride(backbone)
        input_shape = tuple(backbone.inputs[0].shape[1:])
    else:
        backbone_record = backbone or spec.default_backbone
        backbone_options = {**defaults, **(backbone_options or {})}
    model.build_arguments = {
        "model": name,
        "num_classes": num_classes,
        "input_shape": input_shape,
        "backbone": backbone_record,
        "backbone_options": backbone_options,
        "output_stride": output_stride,
        "aux_outputs": aux_outputs,
        "options": options,
    }
    if weights is not None:
        load_model_weights(model, weights)
    return model


def _load_backbone_weights(model_name, backbone, path, default_options):
    """Strict load, unless the model's own default options are why the file does not fit."""
    from keras_fusionseg.backbones.weights import load_backbone_weights

    if not default_options:
        load_backbone_weights(backbone, path)
        return
    try:
        load_backbone_weights(backbone, path)
    except ValueError as error:
        report = load_backbone_weights(backbone, path, strict=False)
        total = report["loaded"] + len(report["missing"]) + len(report["mismatched"])
        warnings.warn(
            f"`{model_name}` builds its backbone with the default options {default_options}, "
            f"which the weight file {str(path)!r} was not made for (e.g. ExFuse's layer "
            "rearrangement has no ImageNet weights): loaded the "
            f"{report['loaded']} of {total} weighted layers that fit; the others keep their "
            "initialisation. Override those keys in `backbone_options` to build the layout "
            f"of the file. Details: {error}",
            stacklevel=3,
        )


def load_model_weights(model, path):
    """Loads a whole-model `.weights.h5` file, with an error naming the file on mismatch."""
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as error:
        raise ValueError(
            f"Weights file {path!r} does not fit model {model.name!r}: {error}"
        ) from error
