"""Numeric precision settings shared by training, export and the scripts.

- `dtype_policy(name)`: Keras' global dtype policy inside a `with` block (training builds its
  model under `config.mixed_precision`, inference rebuilds one under "mixed_bfloat16").
- `onednn_setting()`: whether TensorFlow's oneDNN kernels are in effect.
- `native_bfloat16()`: whether this CPU executes bfloat16 arithmetic in hardware, so that a
  bfloat16 inference path can be faster than float32 rather than an emulation of it.

Why oneDNN matters for the last one: on x86 TensorFlow reaches the AVX512-BF16 / AMX-BF16
instructions only through oneDNN; with oneDNN off (`TF_ENABLE_ONEDNN_OPTS=0`, and the default
on AVX2-only CPUs) its bfloat16 convolutions are Eigen code that converts to float32 and back,
slower than float32 itself.
"""

import contextlib
import os
import platform
import subprocess

import keras

from keras_fusionseg.utils.machine import cpuinfo_value

CPUINFO_PATH = "/proc/cpuinfo"
# /proc/cpuinfo "flags" of x86 CPUs with bfloat16 dot products (Cooper Lake, Sapphire Rapids,
# Zen 4 and later), and the aarch64 "Features" entry of Armv8.6 BF16.
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FEATURE = "bf16"
X86_MACHINES = ("x86_64", "amd64", "i386", "i686")
ARM_MACHINES = ("aarch64", "arm64")
MACOS_BF16_SYSCTL = "hw.optional.arm.FEAT_BF16"


@contextlib.contextmanager
def dtype_policy(name):
    """Keras' global dtype policy set to `name` inside the block, restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def onednn_setting():
    """`TF_ENABLE_ONEDNN_OPTS` as set ("unset" when not) and whether oneDNN is in effect.

    The default depends on the build and CPU (off on AVX2-only x86), so the effective value is
    read from TensorFlow (a private helper; None when it is not available).
    """
    try:
        from tensorflow.python.util import _pywrap_util_port

        effective = bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        effective = None
    return {"env": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset"), "effective": effective}


def _cpuinfo_entries(text, key):
    """The words of the first `key : ...` line of /proc/cpuinfo text (empty set if none)."""
    return set((cpuinfo_value(key, text) or "").split())


def _macos_sysctl(name):
    """`sysctl -n name` as text, or None when it fails (unknown key, no sysctl)."""
    try:
        result = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def native_bfloat16(
    *, cpuinfo=None, cpuinfo_path=CPUINFO_PATH, system=None, machine=None, onednn=None, sysctl=None
):
    """Whether this CPU executes bfloat16 natively, and why (or why not).

    - Linux x86: /proc/cpuinfo "flags" has `avx512_bf16` or `amx_bf16`, and TensorFlow's
      oneDNN is in effect (the only way TensorFlow uses those instructions on x86).
    - Linux aarch64: /proc/cpuinfo "Features" has `bf16`.
    - macOS: `sysctl -n hw.optional.arm.FEAT_BF16` is 1.
    - anything else: False.

    Args:
        cpuinfo: /proc/cpuinfo text; None reads `cpuinfo_path` (for tests: inject the text).
        cpuinfo_path: the file read when `cpuinfo` is None.
        system: `platform.system()` ("Linux", "Darwin", ...); None asks `platform`.
        machine: `platform.machine()` ("x86_64", "aarch64", ...); None asks `platform`.
        onednn: whether oneDNN is in effect (x86 only); None asks `onednn_setting()`.
        sysctl: macOS only, `name -> text or None`; None runs `sysctl -n`.

    Returns:
        (bool, str): native or not, and a one-line reason naming what was checked.
    """
    system = platform.system() if system is None else system
    machine = (platform.machine() if machine is None else machine).lower()
    if system == "Darwin":
        value = (sysctl or _macos_sysctl)(MACOS_BF16_SYSCTL)
        if value == "1":
            return True, f"macOS: {MACOS_BF16_SYSCTL} = 1"
        return False, f"macOS: {MACOS_BF16_SYSCTL} = {value!r}, not 1"
    if system != "Linux":
        return False, f"no bfloat16 detection on {system or 'this system'} ({machine})"
    if machine not in X86_MACHINES + ARM_MACHINES:
        return False, f"no bfloat16 detection on Linux {machine}"
    if cpuinfo is None:
        try:
            with open(cpuinfo_path) as f:
                cpuinfo = f.read()
        except OSError as error:
            return False, f"cannot read {cpuinfo_path}: {error}"
    if machine in ARM_MACHINES:
        if ARM_BF16_FEATURE in _cpuinfo_entries(cpuinfo, "features"):
            return True, f"aarch64 CPU Features include {ARM_BF16_FEATURE}"
        return False, f"aarch64 CPU Features lack {ARM_BF16_FEATURE}"
    found = sorted(set(X86_BF16_FLAGS) & _cpuinfo_entries(cpuinfo, "flags"))
    if not found:
        return False, f"x86 CPU flags have none of {list(X86_BF16_FLAGS)}"
    if onednn is None:
        onednn = onednn_setting()["effective"]
    env = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    if onednn is None:
        return False, f"x86 CPU has {found}, but whether TensorFlow's oneDNN is on is unknown"
    if not onednn:
        return False, (
            f"x86 CPU has {found}, but TensorFlow's oneDNN is off (TF_ENABLE_ONEDNN_OPTS="
            f"{env}), and only oneDNN uses them"
        )
    return True, f"x86 CPU has {found} and TensorFlow's oneDNN is on"


__all__ = ["dtype_policy", "native_bfloat16", "onednn_setting"]
