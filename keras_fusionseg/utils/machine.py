"""What machine a number was measured on: CPU model, cores, vector ISA and oneDNN.

Two CPUs with the same marketing name ("AMD EPYC") can differ by 2x on our models: a Zen 2
(family 23, model 49, AVX2 only, where TensorFlow leaves oneDNN off) and a Zen 4 (family 25,
model 17, AVX-512 with bf16, where TensorFlow turns oneDNN on). Timings, training minutes and
preset metadata therefore record the lscpu model number, the widest vector ISA and whether
oneDNN was in effect, not only the name.
"""

import os
import platform
import subprocess

# Widest first: the first flag /proc/cpuinfo (or lscpu) lists names the machine's vector ISA.
_ISA_FLAGS = (
    ("amx_bf16", "AMX"),
    ("avx512_bf16", "AVX-512 (bf16)"),
    ("avx512f", "AVX-512"),
    ("avx2", "AVX2"),
    ("asimd", "NEON"),
)


def lscpu_fields(text=None):
    """`lscpu`'s "key: value" lines as a dict ({} when lscpu is missing); `text` for tests."""
    if text is None:
        try:
            text = subprocess.run(
                ["lscpu"],
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
                env={**os.environ, "LC_ALL": "C"},
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpuinfo_value(key, text=None):
    """The value of the first `key : value` line of /proc/cpuinfo (or of `text`), the key
    matched case-insensitively; None when absent or unreadable."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read()
        except OSError:
            return None
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key.lower():
            return value.strip()
    return None


def vector_isa(flags):
    """The widest vector ISA named in a CPU flag string ("avx2 avx512f ..."), or None."""
    present = set((flags or "").split())
    for flag, name in _ISA_FLAGS:
        if flag in present:
            return name
    return None


def onednn_in_effect():
    """Whether TensorFlow runs its oneDNN kernels in this process (None when unknown)."""
    from keras_fusionseg.utils.precision import onednn_setting

    return onednn_setting()["effective"]


def describe_machine(lscpu_text=None, *, onednn=True):
    """{cpu, model, family, isa, cores, physical_cores, onednn, source} of this machine.

    Args:
        lscpu_text: `lscpu` output to read instead of running it (tests).
        onednn: bool, also report whether oneDNN is in effect (imports TensorFlow).
    """
    fields = lscpu_fields(lscpu_text)
    cpu = fields.get("Model name") or cpuinfo_value("model name")
    cpu = cpu or platform.processor() or platform.machine()
    flags = fields.get("Flags") or cpuinfo_value("flags") or cpuinfo_value("Features")
    logical = int(fields.get("CPU(s)") or os.cpu_count() or 0) or None
    per_socket, sockets = fields.get("Core(s) per socket"), fields.get("Socket(s)")
    physical = int(per_socket) * int(sockets) if per_socket and sockets else None
    return {
        "cpu": cpu,
        "model": fields.get("Model") or cpuinfo_value("model"),
        "family": fields.get("CPU family") or cpuinfo_value("cpu family"),
        "isa": vector_isa(flags),
        "cores": logical,
        "physical_cores": physical,
        "onednn": onednn_in_effect() if onednn else None,
        "source": "lscpu" if fields else "/proc/cpuinfo",
    }


def machine_label(info):
    """A short label for tables and notes: "AMD EPYC (family 25 model 17, AVX-512 (bf16),
    2 cores, oneDNN on)"."""
    parts = []
    if info.get("family") or info.get("model"):
        parts.append(f"family {info.get('family')} model {info.get('model')}")
    if info.get("isa"):
        parts.append(info["isa"])
    if info.get("cores"):
        parts.append(f"{info['cores']} cores")
    if info.get("onednn") is not None:
        parts.append(f"oneDNN {'on' if info['onednn'] else 'off'}")
    return f"{info.get('cpu')} ({', '.join(parts)})" if parts else str(info.get("cpu"))
