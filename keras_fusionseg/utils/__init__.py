"""Utilities: parameter and multiply-add counting."""

from keras_fusionseg.utils.counting import (  # noqa: F401
    count_macs,
    count_parameters,
    macs_by_op_type,
)
