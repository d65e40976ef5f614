"""Parsing of the `key=value` option strings and image sizes that scripts take as flags.

Own parser: absl flags have no dict-valued flag, and values here are Python literals.
"""

import ast


def split_top_level(text, separator=","):
    """Splits `text` on `separator` outside brackets: "a=(1, 2),b=3" -> ["a=(1, 2)", "b=3"]."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if char == separator and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def parse_value(text):
    """A Python literal ("3", "(1, 2)", "True"), else the string itself ("resnet50")."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_key_values(text, what="options", separator=","):
    """Parses "k=v,k2=v2" into a dict of Python values.

    Args:
        text: str, pairs separated by `separator` (outside brackets).
        what: str, named in the error (e.g. the flag).
        separator: str, one character.

    Returns:
        dict str -> value.
    """
    options = {}
    for item in split_top_level(text, separator):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what}: expected key=value, received {item!r}.")
        options[key.strip()] = parse_value(value)
    return options


def parse_input_size(text):
    """ "513" -> (513, 513); "512,1024" or "512x1024" -> (512, 1024)."""
    parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise ValueError(
            f"input size must be 'S' or 'H,W' with positive integers, received {text!r}."
        )
    return size


def parse_model_spec(spec):
    """Parses "name[:backbone[:output_stride[:key=value...]]]" (see `benchmark_models.py`).

    Option keys starting with "backbone." go to `backbone_options`.

    Returns:
        dict with `name`, `backbone` (None: the model's default), `output_stride` (None:
        the model's default), `backbone_options` and `options`.
    """
    parts = split_top_level(spec, ":")
    if not parts:
        raise ValueError(f"Empty model spec {spec!r}.")
    result = {
        "name": parts[0],
        "backbone": None,
        "output_stride": None,
        "backbone_options": {},
        "options": {},
    }
    positional = []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            if result["options"] or result["backbone_options"]:
                raise ValueError(f"Model spec {spec!r}: {part!r} comes after key=value options.")
            positional.append(part)
        elif key.startswith("backbone."):
            result["backbone_options"][key[len("backbone.") :]] = parse_value(value)
        else:
            result["options"][key] = parse_value(value)
    if len(positional) > 2:
        raise ValueError(f"Model spec {spec!r}: too many positional parts {positional}.")
    if positional:
        result["backbone"] = positional[0] or None
    if len(positional) == 2:
        try:
            result["output_stride"] = int(positional[1])
        except ValueError as error:
            raise ValueError(
                f"Model spec {spec!r}: output stride must be an integer, received {positional[1]!r}."
            ) from error
    return result


def build_from_flags(flag_values, height, width):
    """`models.build` from the model flags scripts share (`model`, `num_classes`, `backbone`,
    `output_stride`, and `backbone_options` / `options` as "key=value,..." text) at
    `height` x `width` (scripts/model_info.py, scripts/profile_model.py)."""
    from keras_fusionseg import models

    return models.build(
        flag_values.model,
        num_classes=flag_values.num_classes,
        input_shape=(height, width, 3),
        backbone=flag_values.backbone,
        output_stride=flag_values.output_stride,
        backbone_options=parse_key_values(flag_values.backbone_options, "--backbone_options"),
        **parse_key_values(flag_values.options, "--options"),
    )
