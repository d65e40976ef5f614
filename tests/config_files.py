"""Loads a config file of `configs/` by name, as `scripts/train.py --config=...` does."""

import importlib.util
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name):
    """`configs/<name>.py`'s `get_config()`."""
    if str(REPO) not in sys.path:  # configs import each other as `configs.<name>`
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
