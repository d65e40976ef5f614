"""`synthetic_shapes`: a built-in, deterministic segmentation dataset needing no files.

Each scene is a textured, noisy background with 2-4 overlapping objects of five shape
classes (circle, rectangle, triangle, ring, ellipse) of random size, position, rotation and
colour. Like real classes (sky is mostly blue), each class has a typical hue with wide
variation (hue bands overlap, saturation and brightness are random) over low-saturation
backgrounds, so colour is a cue and shape settles the rest. Image `i` of a split depends
only on `(seed, split, i)`; splits are generated once per process with NumPy.
"""

import colorsys
import functools

import numpy as np

from keras_fusionseg.data.registry import IGNORE_LABEL, SYNTHETIC_SHAPES_CLASSES

SPLIT_SIZES = {"train": 400, "val": 100}
_SPLIT_STREAM = {"train": 0, "val": 1}
NUM_CLASSES = len(SYNTHETIC_SHAPES_CLASSES)


def _smooth_noise(rng, height, width, cells, channels):
    """Low-frequency noise: a coarse random grid bilinearly interpolated to full size."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1, channels)).astype(np.float32)
    ys = np.linspace(0, cells, height, dtype=np.float32)
    xs = np.linspace(0, cells, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), cells - 1)
    x0 = np.minimum(xs.astype(int), cells - 1)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    rows = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # along x first: (cells + 1, W, C)
    return rows[y0] * (1 - fy) + rows[y0 + 1] * fy


def _background(rng, height, width, yy, xx):
    hsv = rng.uniform(0, 1), rng.uniform(0.0, 0.35), rng.uniform(0.3, 0.85)
    base = 255.0 * np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32)
    texture = 30.0 * _smooth_noise(rng, height, width, int(rng.integers(3, 9)), 3)
    frequency = np.float32(rng.uniform(0.05, 0.4))
    angle = rng.uniform(0, np.pi)
    phase = np.float32(np.cos(angle)) * xx + np.float32(np.sin(angle)) * yy
    stripes = 10.0 * np.sin(frequency * phase)
    return base + texture + stripes[..., None]


def _shape_mask(rng, class_name, yy, xx, cy, cx, radius):
    """Boolean mask of one object centred at (cy, cx) with size `radius` (pixels)."""
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if class_name == "circle":
        return dx * dx + dy * dy <= radius * radius
    if class_name == "ring":
        inner = radius * rng.uniform(0.45, 0.65)
        dist2 = dx * dx + dy * dy
        return (dist2 <= radius * radius) & (dist2 >= inner * inner)
    if class_name == "ellipse":
        minor = radius * rng.uniform(0.35, 0.6)
        return (u / radius) ** 2 + (v / minor) ** 2 <= 1.0
    if class_name == "rectangle":
        half_h = radius * rng.uniform(0.55, 0.95)
        return (np.abs(u) <= radius * 0.9) & (np.abs(v) <= half_h)
    # triangle: three jittered vertices around the centre, inside all three half-planes.
    vertex_angles = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3 + rng.uniform(-0.3, 0.3, 3)
    vy, vx = cy + radius * np.sin(vertex_angles), cx + radius * np.cos(vertex_angles)
    inside = np.ones_like(yy, dtype=bool)
    for i in range(3):
        j = (i + 1) % 3
        cross = (vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i])
        inside &= cross >= 0
    return inside


def _ignore_borders(label, width):
    """Marks pixels within `width` of a class boundary as ignored (like VOC's void borders)."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:-1] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    edge[:, :-1] |= label[:, 1:] != label[:, :-1]
    for _ in range(width - 1):
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    label = label.copy()
    label[edge] = IGNORE_LABEL
    return label


def generate_scene(rng, height, width, border_ignore=0):
    """One (image uint8 [H, W, 3], label uint8 [H, W]) scene drawn from `rng`."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = _background(rng, height, width, yy, xx)
    label = np.zeros((height, width), dtype=np.uint8)
    side = min(height, width)
    for _ in range(int(rng.integers(2, 5))):
        class_id = int(rng.integers(1, NUM_CLASSES))
        radius = rng.uniform(0.12, 0.28) * side
        cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        mask = _shape_mask(rng, SYNTHETIC_SHAPES_CLASSES[class_id], yy, xx, cy, cx, radius)
        if not mask.any():
            continue
        behind = image[mask].mean(axis=0)
        for _ in range(10):  # a colour of the class's hue band that stands out
            hue = (class_id - 1) / (NUM_CLASSES - 1) + rng.uniform(-0.12, 0.12)
            hsv = hue % 1.0, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)
            color = 255.0 * np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32)
            if np.abs(color - behind).sum() > 120:
                break
        shading = 25.0 * _smooth_noise(rng, height, width, 2, 1)
        image[mask] = color + shading[mask]
        label[mask] = class_id
    image += rng.standard_normal(size=image.shape, dtype=np.float32) * 8.0
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if border_ignore:
        label = _ignore_borders(label, border_ignore)
    return image, label


@functools.lru_cache(maxsize=8)
def generate_split(
    split="train", *, num_images=None, image_size=(128, 128), seed=0, border_ignore=0
):
    """All scenes of a split, cached per process.

    Args:
        split: str, `"train"` (400 images by default) or `"val"` (100).
        num_images: int, overrides the split's default size.
        image_size: (height, width) or int.
        seed: int, changes every scene; image `i` depends only on (seed, split, i).
        border_ignore: int, width in pixels of ignored (255) bands on class boundaries.

    Returns:
        (images uint8 [N, H, W, 3], labels uint8 [N, H, W, 1]), read-only arrays.
    """
    if split not in SPLIT_SIZES:
        raise ValueError(
            f"synthetic_shapes: `split` must be one of {sorted(SPLIT_SIZES)}, received {split!r}."
        )
    num_images = SPLIT_SIZES[split] if num_images is None else num_images
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(
            f"synthetic_shapes: `num_images` must be a positive integer, received {num_images!r}."
        )
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(height, width) < 16:
        raise ValueError(
            f"synthetic_shapes: `image_size` must be at least 16x16, received {image_size!r}."
        )
    if not isinstance(border_ignore, int) or border_ignore < 0:
        raise ValueError(
            f"synthetic_shapes: `border_ignore` must be an integer >= 0, received {border_ignore!r}."
        )
    images = np.empty((num_images, height, width, 3), dtype=np.uint8)
    labels = np.empty((num_images, height, width, 1), dtype=np.uint8)
    for index in range(num_images):
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split], index])
        images[index], labels[index, ..., 0] = generate_scene(rng, height, width, border_ignore)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels
