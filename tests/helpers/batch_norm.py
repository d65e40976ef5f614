"""Batch norms with non-trivial statistics, so that inference-path rewrites (folding, bf16) are
tested on more than the identity a fresh batch norm computes."""

import keras


def randomise_batch_norms(model, rng):
    """Random moving mean/variance, gamma and beta for every batch norm in `model`."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0.0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            if layer.center:
                layer.beta.assign(rng.normal(0.0, 0.3, n))
