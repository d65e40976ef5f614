"""Built-in dataset and the training/evaluation pipelines: shapes, determinism, alignment."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_fusionseg import data
from keras_fusionseg.data import pipeline, synthetic


def _dict_dataset(images, labels):
    names = [f"example_{i}" for i in range(len(images))]
    return tf.data.Dataset.from_tensor_slices(
        {"image": np.asarray(images), "label": np.asarray(labels), "filename": names}
    )


def test_synthetic_shapes_is_deterministic_and_varied():
    images, labels = synthetic.generate_split("val", num_images=6, image_size=64, seed=3)
    synthetic.generate_split.cache_clear()
    again, again_labels = synthetic.generate_split("val", num_images=6, image_size=64, seed=3)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, again_labels)
    train, _ = synthetic.generate_split("train", num_images=6, image_size=64, seed=3)
    assert not np.array_equal(images, train)  # splits are different scenes
    assert images.shape == (6, 64, 64, 3) and labels.shape == (6, 64, 64, 1)
    assert set(np.unique(labels)) <= set(range(6))
    assert len(np.unique(labels)) >= 4  # several shape classes over a few scenes
    assert images.std() > 30  # textured, not flat
    # colour is a cue, not the answer: object colours of one class vary widely
    many, many_labels = synthetic.generate_split("train", num_images=40, image_size=32)
    for class_id in range(1, 6):
        assert many[many_labels[..., 0] == class_id].std(axis=0).max() > 20


def test_synthetic_border_ignore_and_info():
    _, labels = synthetic.generate_split("val", num_images=2, image_size=64, border_ignore=1)
    assert 255 in labels
    info = data.get_dataset_info("synthetic_shapes")
    assert info.num_classes == 6 and info.class_names[0] == "background"
    assert info.palette.shape == (6, 3) and info.ignore_label == 255


def test_load_split_synthetic_structure():
    ds = data.load_split("synthetic_shapes", "train", num_images=3, image_size=32)
    element = next(iter(ds))
    assert element["image"].dtype == tf.uint8 and element["image"].shape == (32, 32, 3)
    assert element["label"].dtype == tf.uint8 and element["label"].shape == (32, 32, 1)
    assert element["filename"].numpy() == b"synthetic_shapes/train/00000"


def test_training_pipeline_shapes_and_ranges():
    ds = data.load_split("synthetic_shapes", "train", num_images=8, image_size=48)
    batches = list(data.training_pipeline(ds, crop_size=(40, 56), batch_size=4, seed=0))
    assert len(batches) == 2
    images, labels = batches[0]
    assert images.shape == (4, 40, 56, 3) and images.dtype == tf.float32
    assert labels.shape == (4, 40, 56) and labels.dtype == tf.int32
    assert 0.0 <= images.numpy().min() and images.numpy().max() <= 255.0
    assert set(np.unique(labels)) <= set(range(6)) | {255}


def test_training_pipeline_is_reproducible_with_seed():
    ds = data.load_split("synthetic_shapes", "train", num_images=6, image_size=48)

    def run(seed):
        pipeline = data.training_pipeline(
            ds, crop_size=32, batch_size=3, seed=seed, deterministic=True
        )
        return [(x.numpy(), y.numpy()) for x, y in pipeline]

    first, second, other = run(7), run(7), run(8)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])


def test_crop_pad_flip_keep_label_derived_from_image(rng):
    # label = image[..., 0] % 7: any misalignment between image and label breaks it
    images = rng.integers(0, 256, size=(6, 20, 30, 3), dtype=np.uint8)
    labels = (images[..., :1] % 7).astype(np.uint8)
    pipeline = data.training_pipeline(
        _dict_dataset(images, labels),
        crop_size=24,  # taller than the images: padding, wider: cropping
        batch_size=6,
        scale_range=None,
        color_jitter=None,
        seed=1,
        image_pad_value=0,
    )
    x, y = next(iter(pipeline))
    x, y = x.numpy(), y.numpy()
    padded = y == 255
    assert padded.any() and not padded.all()
    np.testing.assert_array_equal(x[..., 0][padded], 0)
    np.testing.assert_array_equal(x[..., 0][~padded].astype(int) % 7, y[~padded])


def test_random_scale_keeps_blocks_aligned():
    # 8x8 blocks of distinct colours; the label is the block's id. After bilinear (image)
    # and nearest (label) scaling, every pixel whose colour is exactly a block colour
    # (block interiors) still carries that block's id.
    block_ids = np.arange(36).reshape(6, 6)
    colors = np.stack([block_ids * 7, 255 - block_ids * 7, block_ids * 3], -1)
    image = np.kron(colors, np.ones((8, 8, 1))).astype(np.uint8)
    label = np.kron(block_ids, np.ones((8, 8), dtype=int)).astype(np.uint8)[..., None]
    pipeline = data.training_pipeline(
        _dict_dataset([image] * 8, [label] * 8),
        crop_size=40,
        batch_size=8,
        scale_range=(0.75, 2.0),
        color_jitter=None,
        seed=2,
    )
    x, y = next(iter(pipeline))
    x, y = x.numpy(), y.numpy()
    ids_of_color = {tuple(c): i for i, c in enumerate(colors.reshape(-1, 3))}
    checked = 0
    for color, y_value in zip(x.reshape(-1, 3), y.reshape(-1), strict=True):
        block = ids_of_color.get(tuple(color.astype(int)))
        if block is not None and np.all(color == np.round(color)):
            assert y_value == block
            checked += 1
    assert checked > 0.5 * y.size


def test_color_jitter_changes_pixels_not_labels():
    ds = data.load_split("synthetic_shapes", "train", num_images=4, image_size=48)
    kwargs = {"crop_size": 32, "batch_size": 4, "seed": 5, "deterministic": True}
    plain_x, plain_y = next(iter(data.training_pipeline(ds, color_jitter=None, **kwargs)))
    jitter_x, jitter_y = next(iter(data.training_pipeline(ds, **kwargs)))
    np.testing.assert_array_equal(plain_y, jitter_y)
    assert np.abs(plain_x.numpy() - jitter_x.numpy()).mean() > 1.0


def test_eval_pipeline_keeps_resolution_and_pads_batches(rng):
    small = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    large = rng.integers(0, 256, size=(14, 9, 3), dtype=np.uint8)
    elements = [
        {"image": small, "label": np.ones((10, 12, 1), np.uint8), "filename": "a"},
        {"image": large, "label": np.full((14, 9, 1), 2, np.uint8), "filename": "b"},
    ]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(elements),
        output_signature={
            "image": tf.TensorSpec([None, None, 3], tf.uint8),
            "label": tf.TensorSpec([None, None, 1], tf.uint8),
            "filename": tf.TensorSpec([], tf.string),
        },
    )
    singles = list(data.eval_pipeline(ds))
    assert [tuple(x.shape) for x, _ in singles] == [(1, 10, 12, 3), (1, 14, 9, 3)]
    np.testing.assert_array_equal(singles[0][0][0].numpy(), small.astype(np.float32))
    x, y = next(iter(data.eval_pipeline(ds, batch_size=2)))
    assert x.shape == (2, 14, 12, 3) and y.shape == (2, 14, 12)
    np.testing.assert_array_equal(x[0, 10:].numpy(), 0)
    np.testing.assert_array_equal(y[0, 10:].numpy(), 255)
    np.testing.assert_array_equal(y[1, :, 9:].numpy(), 255)
    assert (y[0, :10, :12].numpy() == 1).all() and (y[1, :, :9].numpy() == 2).all()


def test_grayscale_channels(rng):
    gray = rng.integers(0, 256, size=(2, 16, 16, 1), dtype=np.uint8)
    ds = _dict_dataset(gray, np.zeros((2, 16, 16, 1), np.uint8))
    x, _ = next(iter(data.eval_pipeline(ds)))
    assert x.shape == (1, 16, 16, 3)
    np.testing.assert_array_equal(x[0, ..., 0], x[0, ..., 2])
    x, _ = next(iter(data.eval_pipeline(ds, channels=None)))
    assert x.shape == (1, 16, 16, 1)
    x, _ = next(iter(data.training_pipeline(ds, crop_size=8, batch_size=2, channels=None)))
    assert x.shape == (2, 8, 8, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"crop_size": 0}, "crop_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"scale_range": (2.0, 1.0)}, "scale_range"),
        ({"color_jitter": {"blur": 1}}, "color_jitter"),
        ({"channels": 2}, "channels"),
    ],
)
def test_training_pipeline_rejects_bad_arguments(kwargs, match):
    ds = data.load_split("synthetic_shapes", "val", num_images=1, image_size=32)
    arguments = {"crop_size": 16, "batch_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        data.training_pipeline(ds, **arguments)


@pytest.mark.parametrize("factor, flip", [(0.5, False), (1.75, True), (1.0, False)])
def test_scale_crop_flip_matches_numpy_reference(rng, factor, flip):
    # NumPy reference: scale by `factor` with align-corners sampling, pad bottom/right with
    # the fill value, crop at the box's offset, mirror when the box is flipped.
    height, width, crop = 9, 13, (8, 10)
    label = rng.integers(0, 6, (height, width, 1), np.uint8)
    seeds = tf.constant([[1, 2], [3, 4]], tf.int64)
    for flip_seed in range(4):  # several seeds: some boxes flipped, some not
        seed = tf.stack([seeds[0], tf.constant([flip_seed, 0], tf.int64)])
        box = pipeline.scale_crop_flip_box([height, width], crop, factor, seed, flip)
        got = pipeline.sample_box(label, box, crop, "nearest", 255).numpy()[..., 0]
        scaled = np.maximum(np.round(np.array([height, width]) * factor), 1)
        box = box.numpy()
        mirrored = box[1] > box[3]
        offset = np.round(box[:2] * np.maximum(scaled - 1, 1)).astype(int)
        if mirrored:
            offset[1] = round(box[3] * max(scaled[1] - 1, 1))
        expected = np.full(crop, 255, np.int64)
        for i in range(crop[0]):
            for j in range(crop[1]):
                y, x = offset[0] + i, offset[1] + j
                if y < scaled[0] and x < scaled[1]:
                    sy = y * (height - 1) / max(scaled[0] - 1, 1)
                    sx = x * (width - 1) / max(scaled[1] - 1, 1)
                    expected[i, j] = label[int(np.floor(sy + 0.5)), int(np.floor(sx + 0.5)), 0]
        if mirrored:
            expected = expected[:, ::-1]
        np.testing.assert_array_equal(got, expected)
        assert mirrored <= flip


def test_keras_augmentation_layer_caveats():
    # Why the pipeline samples with tf.image instead of Keras augmentation layers: masks
    # come back as floats, and RandomCrop cannot take images of unknown size in tf.data.
    batch = {
        "images": np.zeros((1, 8, 8, 3), np.float32),
        "segmentation_masks": np.ones((1, 8, 8, 1), np.uint8),
    }
    out = keras.layers.RandomFlip("horizontal", seed=1)(batch)
    assert keras.backend.standardize_dtype(out["segmentation_masks"].dtype) == "float32"
    images = tf.data.Dataset.from_generator(
        lambda: iter([np.zeros((8, 8, 3), np.float32)]),
        output_signature=tf.TensorSpec([None, None, 3], tf.float32),
    )
    with pytest.raises(Exception, match="symbolic"):
        images.map(keras.layers.RandomCrop(4, 4))


@pytest.mark.parametrize("flip", [True, False])
def test_training_pipeline_flip_mirrors_image_and_label_together(flip):
    # Column-index content, whole-image crops, no scaling or jitter: each example comes out
    # either unchanged or mirrored, which is read from the pixels, not from the sampling box.
    height, width, count = 6, 9, 24
    columns = np.broadcast_to(np.arange(width, dtype=np.uint8) * 20, (count, height, width))
    ds = tf.data.Dataset.from_tensor_slices(
        {"image": np.repeat(columns[..., None], 3, axis=-1), "label": columns[..., None]}
    )
    batches = data.training_pipeline(
        ds,
        crop_size=(height, width),
        batch_size=count,
        scale_range=None,
        color_jitter=None,
        ignore_label=255,
        flip=flip,
        shuffle_buffer=0,
        seed=3,
    )
    images, labels = next(iter(batches))
    mirrored = 0
    for image, label in zip(images.numpy(), labels.numpy(), strict=True):
        np.testing.assert_array_equal(image[..., 0], label)  # image and label stay aligned
        if np.array_equal(label, columns[0][:, ::-1]):
            mirrored += 1
        else:
            np.testing.assert_array_equal(label, columns[0])
    if flip:  # 24 fair coin flips: both outcomes (fails with probability 2 ** -23)
        assert 0 < mirrored < count
    else:
        assert mirrored == 0
