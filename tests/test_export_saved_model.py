"""SavedModel export: raw-image signatures, size policies, fresh-process equality with Keras."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from export_helpers import tiny_segmenter
from PIL import Image

from keras_fusionseg.export import (
    SegmentationPipeline,
    export_saved_model,
    find_keras_file,
    load_keras_model,
)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


FRESH_PROCESS = """
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
data = np.load(sys.argv[2])
out = {}
for key in ("square", "odd"):
    result = loaded.signatures["serving_default"](images=tf.constant(data[key]))
    out[key + "_ids"] = result["class_ids"].numpy()
    out[key + "_probs"] = result["probabilities"].numpy()
np.savez(sys.argv[3], **out)
"""


@pytest.mark.slow
def test_saved_model_in_fresh_process_equals_keras(tmp_path, rng):
    model = tiny_segmenter(num_classes=4)
    export_dir = tmp_path / "saved_model"
    export_saved_model(
        model, export_dir, include_probabilities=True, signatures=("serving_default",)
    )
    square = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    odd = rng.integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", square=square, odd=odd)
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(
        [
            sys.executable,
            str(script),
            str(export_dir),
            str(tmp_path / "in.npz"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
        timeout=120,
        env=env,
        capture_output=True,
    )
    out = np.load(tmp_path / "out.npz")

    keras_square = model(square.astype("float32"), training=False).numpy()
    # default "whole" policy: the model on the image as it is, as evaluate.py scores it.
    keras_odd = model(odd.astype("float32"), training=False).numpy()
    for key, logits in (("square", keras_square), ("odd", keras_odd)):
        np.testing.assert_allclose(out[key + "_probs"], _softmax(logits), atol=1e-5)
        assert out[key + "_ids"].dtype == np.int32
        assert out[key + "_ids"].shape == logits.shape[:3]
        top2 = np.sort(logits, axis=-1)[..., -2:]
        decided = top2[..., 1] - top2[..., 0] > 1e-4  # ties may break either way
        np.testing.assert_array_equal(out[key + "_ids"][decided], logits.argmax(-1)[decided])


def test_bytes_and_examples_signatures_match_pixels(tmp_path, rng):
    model = tiny_segmenter()
    export_dir = tmp_path / "sm"
    export_saved_model(model, export_dir)
    loaded = tf.saved_model.load(str(export_dir))
    assert set(loaded.signatures) == {"serving_default", "serve_bytes", "serve_examples"}
    images = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    expected = loaded.signatures["serving_default"](images=tf.constant(images))["class_ids"]
    assert set(loaded.signatures["serving_default"].structured_outputs) == {"class_ids"}
    encoded = [_png(image) for image in images]
    from_bytes = loaded.signatures["serve_bytes"](images=tf.constant(encoded))["class_ids"]
    examples = []
    for image, data in zip(images, encoded, strict=True):
        feature = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            "image/format": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"png"])),
            "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[0]])),
            "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[image.shape[1]])),
        }
        examples.append(
            tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
        )
    from_examples = loaded.signatures["serve_examples"](examples=tf.constant(examples))["class_ids"]
    np.testing.assert_array_equal(from_bytes.numpy(), expected.numpy())
    np.testing.assert_array_equal(from_examples.numpy(), expected.numpy())


def test_grayscale_model_decodes_one_channel(tmp_path, rng):
    model = tiny_segmenter(num_classes=2, channels=1)
    export_saved_model(model, tmp_path / "sm", signatures=("serving_default", "serve_bytes"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    image = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    out = loaded.signatures["serve_bytes"](images=tf.constant([_png(image)]))["class_ids"]
    direct = loaded.signatures["serving_default"](images=tf.constant(image[None, ..., None]))
    np.testing.assert_array_equal(out.numpy(), direct["class_ids"].numpy())


def test_resize_policy_for_fixed_size_model(rng):
    model = tiny_segmenter(input_size=(64, 64))
    pipeline = SegmentationPipeline(model)
    assert pipeline.size_policy == "resize" and pipeline.input_size == (64, 64)
    image = rng.integers(0, 256, (1, 48, 80, 3), dtype=np.uint8)
    logits = pipeline.logits(tf.constant(image)).numpy()
    assert logits.shape == (1, 48, 80, 3)
    resized = tf.image.resize(image.astype("float32"), (64, 64)).numpy()
    expected = tf.image.resize(model(resized, training=False), (48, 80)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_resize_policy_on_dynamic_model(rng):
    model = tiny_segmenter()
    pipeline = SegmentationPipeline(model, size_policy="resize", input_size=(32, 32))
    logits = pipeline.logits(tf.constant(rng.integers(0, 256, (1, 20, 90, 3), dtype=np.uint8)))
    assert tuple(logits.shape) == (1, 20, 90, 3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size_policy": "crop"}, "size_policy"),
        ({"size_divisor": 0}, "size_divisor"),
        ({"size_policy": "resize"}, "input_size"),
        ({"size_policy": "resize", "input_size": (32,)}, "input_size"),
    ],
)
def test_pipeline_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationPipeline(tiny_segmenter(), **kwargs)


@pytest.mark.parametrize("policy", ["whole", "pad", "native"])
def test_whole_and_pad_policies_need_dynamic_model(policy):
    with pytest.raises(ValueError, match="needs a model built with unknown height and width"):
        SegmentationPipeline(tiny_segmenter(input_size=(32, 32)), size_policy=policy)


def test_pad_policies_pad_bottom_right_and_crop_back(rng):
    model = tiny_segmenter(num_classes=3)
    image = rng.integers(0, 256, (1, 50, 70, 3), dtype=np.uint8)
    x = image.astype("float32")
    expected = {
        ("pad", "constant"): np.pad(x, [(0, 0), (0, 14), (0, 26), (0, 0)], constant_values=127.5),
        ("native", "constant"): np.pad(
            x, [(0, 0), (0, 14), (0, 26), (0, 0)], constant_values=127.5
        ),
        ("pad", "symmetric"): np.pad(x, [(0, 0), (0, 14), (0, 26), (0, 0)], mode="symmetric"),
    }
    for (policy, mode), padded in expected.items():
        pipeline = SegmentationPipeline(model, size_policy=policy, pad_mode=mode)
        assert pipeline.config()["size_policy"] == "pad"
        reference = model(padded, training=False).numpy()[:, :50, :70]
        np.testing.assert_allclose(pipeline.logits(image), reference, atol=1e-5)
    whole = SegmentationPipeline(model)
    assert whole.config()["size_policy"] == "whole"
    np.testing.assert_allclose(whole.logits(image), model(x, training=False), atol=1e-5)


def test_export_rejects_unknown_signature_and_multi_pass_policy(tmp_path):
    with pytest.raises(ValueError, match="signatures"):
        export_saved_model(tiny_segmenter(), tmp_path / "x", signatures=("serving_default", "foo"))
    with pytest.raises(ValueError, match="one model call per image"):
        export_saved_model(tiny_segmenter(), tmp_path / "y", size_policy="multiscale")


def test_find_keras_file_in_workdir(tmp_path):
    model = tiny_segmenter()
    (tmp_path / "checkpoints").mkdir()
    model.save(tmp_path / "checkpoints" / "model.keras")
    (tmp_path / "config.json").write_text(json.dumps({}))
    assert find_keras_file(tmp_path).endswith("model.keras")
    loaded = load_keras_model(tmp_path)
    # The library's one default: final.keras (what metrics.json scores), then best.keras.
    model.save(tmp_path / "checkpoints" / "best.keras")
    assert find_keras_file(tmp_path).endswith("best.keras")
    model.save(tmp_path / "checkpoints" / "final.keras")
    assert find_keras_file(tmp_path).endswith("final.keras")
    x = np.full((1, 32, 32, 3), 100.0, "float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)
    empty = tmp_path / "empty_workdir"
    empty.mkdir()
    with pytest.raises(ValueError, match="no `.keras`"):
        find_keras_file(empty)
    with pytest.raises(ValueError, match="neither"):
        find_keras_file(tmp_path / "missing")
