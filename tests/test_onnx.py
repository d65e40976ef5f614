"""ONNX export: every registered model (tiny variant) runs in onnxruntime as it runs in Keras.

The graph is traced with dynamic batch, height and width; it is run at sizes no model here was
called with before (odd, non-square, batch 2) and must match Keras within 1e-4. Skipped without
the `onnx` extra.
"""

import importlib.util
import os
import sys

import numpy as np
import pytest

from keras_fusionseg import models
from keras_fusionseg.export import export_onnx
from keras_fusionseg.layers.atrous import AtrousConv2D, AtrousDepthwiseConv2D

requires_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnx", "onnxruntime")),
    reason="the `onnx` extra is not installed",
)

NUM_CLASSES = 3
SIZES = ((1, 97, 61), (2, 40, 72))


def _logits(outputs):
    return (outputs["logits"] if isinstance(outputs, dict) else outputs).numpy()


def _dilated_layers(model):
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, AtrousConv2D | AtrousDepthwiseConv2D) and max(layer.dilation_rate) > 1:
            count += 1
    return count


def _dilated_conv_nodes(proto):
    from onnx import helper

    nodes = []
    for node in proto.graph.node:
        if node.op_type == "Conv":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if max(attributes.get("dilations", [1])) > 1:
                nodes.append(attributes)
    return nodes


@requires_onnx
@pytest.mark.parametrize("name", models.list_models())
def test_onnx_matches_keras_at_untraced_sizes(name, tmp_path, rng):
    model = models.build(name, num_classes=NUM_CLASSES, **models.get_model_spec(name).tiny)
    path = tmp_path / "model.onnx"
    proto = export_onnx(model, path, class_ids=True)

    # One native dilated Conv per dilated layer, with explicit pads (onnxruntime refuses
    # auto_pad SAME with dilations).
    dilated = _dilated_conv_nodes(proto)
    assert len(dilated) == _dilated_layers(model)
    assert all(node.get("auto_pad", b"NOTSET") == b"NOTSET" for node in dilated)

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert session.get_inputs()[0].shape == ["batch", "height", "width", 3]
    assert [o.name for o in session.get_outputs()] == ["logits", "class_ids"]
    for batch, height, width in SIZES:
        images = rng.integers(0, 256, (batch, height, width, 3)).astype(np.float32)
        expected = _logits(model(images, training=False))
        logits, class_ids = session.run(None, {"images": images})
        assert logits.shape == (batch, height, width, NUM_CLASSES)
        np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
        top2 = np.sort(expected, axis=-1)[..., -2:]
        decided = top2[..., 1] - top2[..., 0] > 1e-3
        np.testing.assert_array_equal(class_ids[decided], expected.argmax(-1)[decided])


@requires_onnx
def test_onnx_logits_only_and_argument_errors(tmp_path, rng):
    model = models.build(
        "deeplabv3plus", num_classes=2, **models.get_model_spec("deeplabv3plus").tiny
    )
    export_onnx(model, tmp_path / "sub" / "logits.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "sub" / "logits.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits"]
    images = rng.integers(0, 256, (1, 33, 47, 3)).astype(np.float32)
    (logits,) = session.run(None, {"images": images})
    np.testing.assert_allclose(logits, _logits(model(images)), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="`opset` must be an int >= 13, received 9"):
        export_onnx(model, tmp_path / "x.onnx", opset=9)


def test_onnx_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    model = models.build("gcn", num_classes=2, **models.get_model_spec("gcn").tiny)
    with pytest.raises(ImportError, match=r"pip install 'keras_fusionseg\[onnx\]'"):
        export_onnx(model, tmp_path / "x.onnx")


@pytest.mark.slow
def test_export_script_writes_onnx_with_class_ids(tmp_path, rng, load_script):
    """`scripts/export.py --onnx` writes model.onnx whose class ids are the Keras argmax."""
    import keras
    import onnxruntime as ort
    from absl import flags

    checkpoint = os.path.join(os.path.dirname(__file__), "data", "quickstart.keras")
    script = load_script("export")
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["x", f"--model={checkpoint}", f"--output={tmp_path}", "--onnx"])
    script.main([])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits", "class_ids"]
    images = rng.integers(0, 256, (1, 45, 77, 3)).astype(np.float32)
    logits, class_ids = session.run(None, {"images": images})
    keras_logits = _logits(keras.saving.load_model(checkpoint)(images))
    np.testing.assert_allclose(logits, keras_logits, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(class_ids, np.argmax(keras_logits, axis=-1))
