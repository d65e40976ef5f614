"""ExFuse switches change what the model computes, not only its loss keys and layer names.

SEB: its weights reach the logits. DAP: the logits are eq. 3 of the decoder's k*k*C channels,
checked with a NumPy reference written here.
"""

import keras
import numpy as np
from test_exfuse_models import ALL_OFF, NUM_CLASSES

from keras_fusionseg import models


def build(**switches):
    options = {**models.get_model_spec("exfuse").tiny, **ALL_OFF, **switches}
    return models.build("exfuse", num_classes=NUM_CLASSES, **options)


def image(rng):
    return rng.uniform(0, 255, size=(1, 32, 48, 3)).astype("float32")


def np_dap(x, k):
    """ExFuse eq. 3: mean over the k*k neighbours (l, m) of group l*k + m, zeros outside."""
    classes = x.shape[-1] // (k * k)
    half = k // 2
    padded = np.pad(x, ((0, 0), (half, half), (half, half), (0, 0)))
    height, width = x.shape[1:3]
    total = np.zeros((*x.shape[:3], classes))
    for l in range(k):  # noqa: E741  (the paper's index names)
        for m in range(k):
            group = l * k + m
            window = padded[:, l : l + height, m : m + width]
            total += window[..., group * classes : (group + 1) * classes]
    return total / (k * k)


def test_semantic_embedding_weights_reach_the_logits(rng):
    model = build(semantic_embedding=True)
    x = image(rng)
    before = np.asarray(model(x, training=False))
    for level in ("P2", "P3", "P4"):
        seb = model.get_layer(f"seb_{level}")
        assert seb.weights, level
        for variable in seb.weights:
            noise = rng.normal(0, 0.5, variable.shape) * (np.std(variable.numpy()) + 0.1)
            variable.assign(variable.numpy() + noise.astype(variable.dtype))
        after = np.asarray(model(x, training=False))
        assert np.abs(after - before).max() > 1e-4, f"seb_{level} does not reach the logits"
        before = after


def test_dap_switch_makes_logits_eq3_of_the_decoder_output(rng):
    model = build(densely_adjacent_prediction=True)
    decoder = model.get_layer("br_up2").output
    assert decoder.shape[-1] == 9 * NUM_CLASSES
    probe = keras.Model(model.input, [decoder, model.output])
    scores, logits = (np.asarray(t, "float64") for t in probe(image(rng), training=False))
    assert logits.shape[-1] == NUM_CLASSES
    np.testing.assert_allclose(logits, np_dap(scores, 3), rtol=1e-4, atol=1e-5)
    # Off, the decoder predicts the classes directly.
    plain = build()
    assert plain.get_layer("br_up2").output.shape[-1] == NUM_CLASSES
