"""Colour label maps, overlays on the image and a legend of class names."""

import numpy as np
from PIL import Image, ImageDraw

from keras_fusionseg.data.registry import default_palette  # noqa: F401  (re-exported)


def colorize(class_ids, palette):
    """(H, W) integer class ids -> (H, W, 3) uint8 colours; ids outside the palette are black."""
    palette = np.asarray(palette, np.uint8)
    class_ids = np.asarray(class_ids)
    valid = (class_ids >= 0) & (class_ids < len(palette))
    colours = palette[np.where(valid, class_ids, 0)]
    colours[~valid] = 0
    return colours


def overlay(image, class_ids, palette, alpha=0.5, clear_black=True):
    """Blends the colour label map over an image (H, W, 1 or 3), returning uint8 RGB.

    Void pixels (ids outside the palette, e.g. the ignore label 255) are transparent: they
    keep the image's own pixels, so unlabelled areas are not darkened. With `clear_black`
    (default) so are classes coloured black, the "background" of the PASCAL VOC palette
    (`default_palette`) and of most datasets: black only darkens the image under it.

    Args:
        image: (H, W), (H, W, 1) or (H, W, 3) pixels in [0, 255].
        class_ids: (H, W) integer class ids.
        palette: (num_classes, 3) colours.
        alpha: float in [0, 1], weight of the class colours.
        clear_black: bool, draw black classes transparent too.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], received {alpha!r}.")
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    class_ids = np.asarray(class_ids)
    palette = np.asarray(palette, np.uint8)
    if class_ids.shape != image.shape[:2]:
        raise ValueError(
            f"`class_ids` must have the image's height and width {image.shape[:2]}, "
            f"received shape {class_ids.shape}."
        )
    coloured = (class_ids >= 0) & (class_ids < len(palette))
    if clear_black:
        black = np.all(palette == 0, axis=-1)
        coloured &= ~black[np.where(coloured, class_ids, 0)]
    colours = colorize(class_ids, palette).astype(np.float32)
    weight = np.where(coloured, np.float32(alpha), np.float32(0.0))[..., None]
    blended = (1.0 - weight) * image.astype(np.float32) + weight * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def add_legend(image, class_names, palette, class_ids=None, swatch=12, clear_black=True):
    """Appends a legend column (colour swatch + class name) to the right of an RGB image.

    As in `overlay`, classes coloured black are transparent (with `clear_black`): their
    swatch is a grey and white checkerboard, not a black square (the demo page of
    `scripts/serve.py` draws them the same way).

    Args:
        image: (H, W, 3) uint8.
        class_names: sequence of names, index = class id.
        palette: (num_classes, 3) colours.
        class_ids: optional iterable of the ids to list (e.g. those present); default all.
        swatch: int, swatch size in pixels.
        clear_black: bool, show black classes as transparent (as `overlay` draws them).
    """
    image = Image.fromarray(np.asarray(image, np.uint8))
    ids = sorted(set(int(i) for i in np.unique(class_ids))) if class_ids is not None else None
    ids = [
        i
        for i in (ids if ids is not None else range(len(class_names)))
        if 0 <= i < len(class_names)
    ]
    row = swatch + 4
    draw_probe = ImageDraw.Draw(image)
    text_width = max([int(draw_probe.textlength(class_names[i])) for i in ids] + [0])
    legend_width = swatch + 12 + text_width
    height = max(image.height, row * len(ids) + 4)
    canvas = Image.new("RGB", (image.width + legend_width, height), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, class_id in enumerate(ids):
        x, y = image.width + 4, 4 + k * row
        colour = tuple(int(c) for c in palette[class_id])
        if clear_black and not any(colour):
            _checkerboard(draw, x, y, swatch)
            draw.rectangle([x, y, x + swatch, y + swatch], outline=(0, 0, 0))
        else:
            draw.rectangle([x, y, x + swatch, y + swatch], fill=colour, outline=(0, 0, 0))
        draw.text((x + swatch + 4, y), class_names[class_id], fill=(0, 0, 0))
    return np.asarray(canvas)


CHECKER_COLOURS = ((187, 187, 187), (255, 255, 255))  # a transparent swatch's squares


def _checkerboard(draw, x, y, size, cell=4):
    """Fills the square [x, x + size] x [y, y + size] with grey and white `cell`-pixel squares."""
    for top in range(y, y + size + 1, cell):
        for left in range(x, x + size + 1, cell):
            colour = CHECKER_COLOURS[((top - y) // cell + (left - x) // cell) % 2]
            right, bottom = min(left + cell - 1, x + size), min(top + cell - 1, y + size)
            draw.rectangle([left, top, right, bottom], fill=colour)
