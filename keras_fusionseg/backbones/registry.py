"""Backbone registry: name -> builder of a functional feature extractor.

Contract every backbone follows (the keras-hub convention, so heads never name layers):

- `build_backbone(name, input_shape=..., output_stride=..., weights=..., **options)` returns a
  functional `keras.Model` taking raw RGB pixels in [0, 255] (normalisation is its first layer)
  whose outputs are a dict of feature maps, also available as `model.pyramid_outputs`.
- Keys name the stage: `"P1"` (stride 2, optional), `"P2"` (stride 4), `"P3"` (8), `"P4"` (16),
  `"P5"` (32). With an output stride below 32 the deeper stages keep the output stride's
  resolution (dilated), so the actual stride of level `Pl` is `min(2**l, output_stride)`.
- `model.pyramid_channels` maps the same keys to channel counts; `model.output_stride` is
  the stride of `"P5"`.
"""

import dataclasses
from collections.abc import Callable

VALID_OUTPUT_STRIDES = (8, 16, 32)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: Callable
    description: str


_BACKBONES: dict[str, BackboneSpec] = {}


def register_backbone(name, description=""):
    """Decorator registering `builder(input_shape, output_stride, **options) -> keras.Model`."""

    def decorator(builder):
        if name in _BACKBONES:
            raise ValueError(f"Backbone {name!r} is registered twice.")
        _BACKBONES[name] = BackboneSpec(
            name, builder, description or (builder.__doc__ or "").strip().split("\n")[0]
        )
        return builder

    return decorator


def list_backbones():
    """Names of all registered backbones, sorted."""
    return sorted(_BACKBONES)


def get_backbone_spec(name):
    if name not in _BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}. Available backbones: {list_backbones()}.")
    return _BACKBONES[name]


def check_output_stride(output_stride):
    if output_stride not in VALID_OUTPUT_STRIDES:
        raise ValueError(
            f"`output_stride` must be one of {list(VALID_OUTPUT_STRIDES)}, received {output_stride!r}."
        )


def build_backbone(name, *, input_shape=(None, None, 3), output_stride=32, weights=None, **options):
    """Builds backbone `name` at `output_stride`; `weights` is a local weight file or None."""
    spec = get_backbone_spec(name)
    check_output_stride(output_stride)
    model = spec.builder(input_shape=tuple(input_shape), output_stride=output_stride, **options)
    if weights is not None:
        from keras_fusionseg.backbones.weights import load_backbone_weights

        load_backbone_weights(model, weights)
    return model
