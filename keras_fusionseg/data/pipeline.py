"""Training and evaluation `tf.data` pipelines for `{"image", "label"}` datasets.

Both output `(images float32 [B, h, w, C] in [0, 255], labels int32 [B, h, w])`: models
normalise pixels themselves (their first layer), so pipelines hand over raw pixels.

Training augmentation follows the DeepLab recipe: random scale (from a range in steps),
pad to the crop size (image with `image_pad_value`, label with the ignore label), random
crop, horizontal flip, photometric jitter. Scale, pad, crop and flip are one sampling box
(`tf.image.crop_and_resize`) applied to the image (bilinear) and the label (nearest), so
both move together pixel for pixel, labels stay exact integers, and only the crop is
computed. Randomness is stateless and keyed per element, so with a `seed` and
`deterministic=True` two runs give identical batches.
"""

import random

import tensorflow as tf

from keras_fusionseg.checks import check_positive_int
from keras_fusionseg.data.registry import IGNORE_LABEL
from keras_fusionseg.data.sources import EncodedSplit

AUTOTUNE = tf.data.AUTOTUNE

DEFAULT_COLOR_JITTER = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05}
_JITTER_KEYS = frozenset(DEFAULT_COLOR_JITTER)


def _check_channels(channels):
    if channels not in (None, 1, 3):
        raise ValueError(f"`channels` must be None, 1 or 3, received {channels!r}.")


def _crop_hw(crop_size):
    if isinstance(crop_size, int) and not isinstance(crop_size, bool):
        crop_size = (crop_size, crop_size)
    if (
        not isinstance(crop_size, list | tuple)
        or len(crop_size) != 2
        or not all(isinstance(v, int) and v > 0 for v in crop_size)
    ):
        raise ValueError(
            f"`crop_size` must be a positive int or (height, width), received {crop_size!r}."
        )
    return tuple(crop_size)


def scale_choices(scale_range, scale_step):
    """The discrete scales `min, min + step, ..., max` (None when the range is continuous)."""
    if scale_range is None:
        return [1.0]
    low, high = scale_range
    if not 0 < low <= high:
        raise ValueError(
            f"`scale_range` must be (min, max) with 0 < min <= max, received {scale_range!r}."
        )
    if not scale_step:
        return None
    if scale_step < 0:
        raise ValueError(f"`scale_step` must be > 0 or None, received {scale_step!r}.")
    count = int(round((high - low) / scale_step)) + 1
    return [low + i * scale_step for i in range(count) if low + i * scale_step <= high + 1e-6]


def _check_jitter(color_jitter):
    if not color_jitter:
        return {}
    if not isinstance(color_jitter, dict) or not set(color_jitter) <= _JITTER_KEYS:
        raise ValueError(
            f"`color_jitter` must be None or a dict with keys in {sorted(_JITTER_KEYS)}, "
            f"received {color_jitter!r}."
        )
    for key, value in color_jitter.items():
        limit = 0.5 if key == "hue" else 1.0
        if not 0 <= value <= limit:
            raise ValueError(
                f"`color_jitter[{key!r}]` must be in [0, {limit}], received {value!r}."
            )
    return dict(color_jitter)


def to_channels(image, channels):
    """Converts a uint8/float image to `channels` (1 or 3); None keeps it as it is."""
    if channels is None:
        return image
    image_channels = tf.shape(image)[-1]
    if channels == 3:
        rgb = tf.cond(
            tf.equal(image_channels, 1),
            lambda: tf.image.grayscale_to_rgb(image[..., :1]),
            lambda: image[..., :3],
        )
        return tf.ensure_shape(rgb, [None, None, 3])
    gray = tf.cond(
        tf.equal(image_channels, 3),
        lambda: tf.cast(
            tf.round(tf.image.rgb_to_grayscale(tf.cast(image[..., :3], tf.float32))), image.dtype
        ),
        lambda: image[..., :1],
    )
    return tf.ensure_shape(gray, [None, None, 1])


def random_scale_factor(seed, scales, scale_range):
    """One scale factor: uniform over `scales`, or over `scale_range` when `scales` is None."""
    if scales is None:
        return tf.random.stateless_uniform([], seed, scale_range[0], scale_range[1])
    index = tf.random.stateless_uniform([], seed, 0, len(scales), dtype=tf.int32)
    return tf.gather(tf.constant(scales, tf.float32), index)


def scale_crop_flip_box(image_hw, crop_hw, factor, seed, flip):
    """The normalised `crop_and_resize` box of a random crop of the image scaled by `factor`.

    The image scaled by `factor` (align-corners sampling) is cropped at a random offset,
    padding at the bottom/right where it is smaller than the crop, and mirrored when `flip`.
    Output row i samples input row (offset + i) * (H - 1) / (scaled H - 1); rows past the
    scaled image land beyond the input and take the padding value.
    """
    image_hw = tf.cast(image_hw, tf.float32)
    scaled_hw = tf.maximum(tf.round(image_hw * factor), 1.0)
    crop = tf.constant(crop_hw, tf.float32)
    max_offset = tf.cast(tf.maximum(scaled_hw - crop, 0.0), tf.int32)
    offset = tf.random.stateless_uniform([2], seed[0], 0, tf.int32.max, dtype=tf.int32)
    offset = tf.cast(offset % (max_offset + 1), tf.float32)
    span = tf.maximum(scaled_hw - 1.0, 1.0)
    start, end = offset / span, (offset + crop - 1.0) / span
    box = tf.stack([start[0], start[1], end[0], end[1]])
    if flip:  # x1 > x2 samples the crop mirrored left-right
        mirrored = tf.random.stateless_uniform([], seed[1]) < 0.5
        box = tf.where(mirrored, tf.gather(box, [0, 3, 2, 1]), box)
    return box


def sample_box(tensor, box, crop_hw, method, fill_value):
    """`tensor` [H, W, C] sampled in `box` to `crop_hw` (float32), `fill_value` outside."""
    return tf.image.crop_and_resize(
        tf.cast(tensor, tf.float32)[None],
        box[None],
        [0],
        crop_hw,
        method=method,
        extrapolation_value=fill_value,
    )[0]


def color_jitter_image(image, seeds, jitter, channels):
    """Brightness, contrast, saturation, hue jitter of a float [0, 255] image."""
    x = image / 255.0
    if "brightness" in jitter:
        x = tf.image.stateless_random_brightness(x, jitter["brightness"], seeds[0])
    if "contrast" in jitter:
        c = jitter["contrast"]
        x = tf.image.stateless_random_contrast(x, 1.0 - c, 1.0 + c, seeds[1])
    if channels == 3:
        if "saturation" in jitter:
            s = jitter["saturation"]
            x = tf.image.stateless_random_saturation(x, 1.0 - s, 1.0 + s, seeds[2])
        if "hue" in jitter:
            x = tf.image.stateless_random_hue(x, jitter["hue"], seeds[3])
    return tf.clip_by_value(x * 255.0, 0.0, 255.0)


def augment_example(
    example,
    seed,
    *,
    crop_hw,
    scales,
    scale_range,
    flip,
    jitter,
    ignore_label,
    channels,
    image_pad_value,
):
    """One training example -> (image float32 [h, w, C], label int32 [h, w])."""
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    image = to_channels(example["image"], channels)
    label = example["label"]
    factor = random_scale_factor(seeds[0], scales, scale_range)
    box = scale_crop_flip_box(tf.shape(image)[:2], crop_hw, factor, seeds[1:3], flip)
    # One tf.image box for image and label (not Keras layers): the label is sampled at the
    # very positions of the image, by nearest neighbour, so it stays exact and aligned. Only
    # the crop's pixels are computed, not the whole scaled image.
    image = sample_box(image, box, crop_hw, "bilinear", image_pad_value)
    label = sample_box(label, box, crop_hw, "nearest", ignore_label)[..., 0]
    if jitter:
        image = color_jitter_image(image, seeds[3:7], jitter, channels)
    if channels is not None:
        image = tf.ensure_shape(image, [crop_hw[0], crop_hw[1], channels])
    return image, tf.cast(label, tf.int32)


def training_pipeline(
    ds,
    *,
    crop_size,
    batch_size,
    scale_range=(0.5, 2.0),
    scale_step=0.25,
    flip=True,
    color_jitter=DEFAULT_COLOR_JITTER,
    ignore_label=IGNORE_LABEL,
    channels=3,
    seed=None,
    deterministic=False,
    drop_remainder=True,
    shuffle_buffer=256,
    cache=False,
    repeat=False,
    image_pad_value=127.5,
):
    """Shuffled, augmented, batched training data.

    Args:
        ds: dataset of `{"image": uint8 [H, W, C], "label": uint8 [H, W, 1], ...}`, e.g.
            from `load_split`, or an `EncodedSplit` from `load_encoded_split`, whose records
            are then shuffled before decoding (same batches, a cheaper shuffle buffer).
        crop_size: int or (height, width) of the training crops.
        batch_size: int.
        scale_range: (min, max) random scale factors, or None for no scaling.
        scale_step: float step between scales (0.25 gives 0.5, 0.75, ..., 2.0), or None
            for a continuous uniform scale.
        flip: bool, random horizontal flip.
        color_jitter: dict with any of `brightness` (max delta, fraction of 255),
            `contrast`, `saturation` (factor range 1 +- value), `hue` (max delta, in
            [0, 0.5]); None or {} disables photometric jitter.
        ignore_label: int, label of padded pixels.
        channels: 3 (grayscale becomes RGB), 1, or None (keep as stored).
        seed: int or None; with `deterministic=True` a seed gives reproducible batches.
        deterministic: bool, keep the element order of parallel maps (reproducible).
        drop_remainder: bool, drop the last partial batch (static batch size, needed
            under a distribution strategy).
        shuffle_buffer: int, elements in the shuffle buffer (0 disables shuffling).
        cache: bool, keep decoded examples in memory after the first epoch.
        repeat: bool, repeat forever.
        image_pad_value: float, image value of padding (127.5 becomes 0 after the
            [-1, 1] normalisation).

    Returns:
        A dataset of `(images float32 [B, h, w, C] in [0, 255], labels int32 [B, h, w])`.
    """
    crop_hw = _crop_hw(crop_size)
    check_positive_int("batch_size", batch_size)
    _check_channels(channels)
    scales = scale_choices(scale_range, scale_step)
    jitter = _check_jitter(color_jitter)
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
        raise ValueError(f"`shuffle_buffer` must be an integer >= 0, received {shuffle_buffer!r}.")
    if not 0 <= ignore_label <= 255:
        raise ValueError(f"`ignore_label` must be in [0, 255], received {ignore_label!r}.")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)

    decode = None
    if isinstance(ds, EncodedSplit):
        # Cached: decode once, before the cache. Otherwise decode after the shuffle.
        ds, decode = (ds.dataset(), None) if cache else (ds.records, ds.decode)
    if cache:
        ds = ds.cache()
    if repeat:
        ds = ds.repeat()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    element_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, element_seeds)

    def prepare(element, random_int):
        example = decode(*element) if decode is not None else element
        element_seed = tf.stack([random_int, tf.constant(seed, tf.int64)])
        return augment_example(
            example,
            element_seed,
            crop_hw=crop_hw,
            scales=scales,
            scale_range=scale_range,
            flip=flip,
            jitter=jitter,
            ignore_label=ignore_label,
            channels=channels,
            image_pad_value=image_pad_value,
        )

    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(AUTOTUNE)


def eval_pipeline(
    ds,
    *,
    batch_size=1,
    channels=3,
    ignore_label=IGNORE_LABEL,
    image_pad_value=0.0,
    cache=False,
):
    """Evaluation data at the original resolution, no random ops, order kept.

    With `batch_size > 1`, images of different sizes are padded at the bottom and right
    to the largest size in the batch: images with `image_pad_value` (0), labels with
    `ignore_label`, so padding never counts in metrics.

    Args:
        ds: dataset of `{"image", "label", ...}` (e.g. from `load_split`), or an
            `EncodedSplit`.
        batch_size: int.
        channels: 3 (grayscale becomes RGB), 1, or None.
        ignore_label: int, label value of padding.
        image_pad_value: float, image value of padding.
        cache: bool, keep decoded examples in memory after the first pass.

    Returns:
        A dataset of `(images float32 [B, H, W, C] in [0, 255], labels int32 [B, H, W])`.
    """
    check_positive_int("batch_size", batch_size)
    _check_channels(channels)
    if isinstance(ds, EncodedSplit):
        ds = ds.dataset()

    def prepare(example):
        image = tf.cast(to_channels(example["image"], channels), tf.float32)
        return image, tf.cast(example["label"][..., 0], tf.int32)

    if cache:
        ds = ds.cache()
    ds = ds.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=True)
    if batch_size == 1:
        ds = ds.batch(1)
    else:
        ds = ds.padded_batch(
            batch_size,
            padding_values=(
                tf.constant(image_pad_value, tf.float32),
                tf.constant(ignore_label, tf.int32),
            ),
        )
    return ds.prefetch(AUTOTUNE)
