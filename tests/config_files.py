"""Loads the config files of `configs/` as `scripts/train.py --config=...` does, and flattens them.

A config is named like the flag without its folder: "smoke" or "camvid:model=pspnet" (the text
after ':' goes to `get_config(arg)`, the variant argument of ml_collections config files).
"""

import pathlib
import runpy

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def load_config(name):
    """`configs/<file>.py`'s `get_config()`, or `get_config(<arg>)` for "<file>:<arg>"."""
    file_name, *arg = name.split(":", 1)
    return runpy.run_path(str(CONFIGS / f"{file_name}.py"))["get_config"](*arg)


def shipped_configs():
    """Every config file, and every named variant of the files that define `VARIANTS` (and
    `MOBILENETV2_VARIANTS`, the design comparison's recipes)."""
    names = []
    for path in sorted(CONFIGS.glob("[a-z]*.py")):
        names.append(path.stem)
        module = runpy.run_path(str(path))
        names += [f"{path.stem}:model={variant}" for variant in sorted(module.get("VARIANTS", {}))]
        names += [
            f"{path.stem}:model={variant},backbone=mobilenetv2"
            for variant in sorted(module.get("MOBILENETV2_VARIANTS", {}))
        ]
    return names


def flatten(config):
    """{"model.output_stride": "16", ...}: every field of every section as its `repr`.

    Reprs keep types (a tuple is not a list); a dict-valued field such as `model.options` is
    one field, its items sorted by key.
    """
    items = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            items.update({f"{key}.{field}": _text(v) for field, v in value.items()})
        else:
            items[key] = _text(value)
    return items


def _text(value):
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return repr({key: value[key] for key in sorted(value)})
    return repr(value)
