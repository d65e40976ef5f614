"""Argument checks shared by every package (layers, data, export): one wording everywhere."""

import numpy as np


def check_positive_int(name, value):
    """Raises a ValueError naming `name` unless `value` is an integer >= 1 (bools are not)."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, received {value!r}.")
