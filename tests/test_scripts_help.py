"""Every script answers `--help` without importing TensorFlow, its docstring printed line by line.

`python scripts/<name>.py --help` runs in a fresh process under `-X importtime`, whose import
log says which modules were loaded: neither TensorFlow nor Keras may be (importing them is
what made `--help` take 6-8 s and print TensorFlow's log lines first). Wall times are printed
(`pytest -s`), not asserted: on a loaded 2-core machine a time bound would fail at random.
absl's `--help` exits with status 1 (`app.HelpFlag`); argparse's with 0.
"""

import ast
import pathlib
import re
import subprocess
import sys
import time

import pytest

from keras_fusionseg.training.config import PRECISIONS
from keras_fusionseg.training.strategies import STRATEGIES

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.stem for path in (REPO / "scripts").glob("[a-z]*.py"))
HEAVY = {"tensorflow", "keras", "tf_keras", "jax", "torch"}
TF_LOG = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)|cpu_feature_guard|oneDNN"
)


def docstring_source_lines(path):
    """The module docstring's lines as written in the file (a `\\` + newline stays a break)."""
    source = path.read_text()
    node = ast.parse(source).body[0]
    text = ast.get_source_segment(source, node)
    text = re.sub(r'^[rRuU]?("""|\'\'\')|("""|\'\'\')$', "", text.strip())
    # absl prints it %-formatted: "%%" is "%", and "%s" would become the program's path.
    return [line.strip().replace("%%", "%") for line in text.splitlines() if line.strip()]


def run_help(name):
    """(return code, stdout, stderr without the import log, imported top-level names, seconds)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "scripts" / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    seconds = time.perf_counter() - start
    imported, stderr = set(), []
    for line in result.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[-1].strip().split(".")[0])
        else:
            stderr.append(line)
    return result.returncode, result.stdout, stderr, imported, seconds


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_help_answers_without_tensorflow_and_keeps_docstring_lines(name):
    code, stdout, stderr, imported, seconds = run_help(name)
    print(f"{name}.py --help: {seconds:.2f} s")
    assert "absl" in imported or name == "mutation_check", imported  # the import log works
    assert code == (0 if name == "mutation_check" else 1), (code, stdout, stderr)
    assert not imported & HEAVY, f"{name}.py --help imported {sorted(imported & HEAVY)}"
    assert not [line for line in stderr if TF_LOG.search(line)], stderr
    printed = {line.strip() for line in stdout.splitlines()}
    lines = docstring_source_lines(REPO / "scripts" / f"{name}.py")
    if name == "mutation_check":  # argparse prints the first sentence as its description
        lines = lines[:1]
    missing = [line for line in lines if line not in printed]
    assert not missing, (
        f"{name}.py --help misprints its docstring (a lost line break or %-formatting): {missing}"
    )


@pytest.mark.parametrize("name", ["train", "evaluate"])
def test_script_enum_flags_list_the_library_values(name, load_script):
    """--strategy and --mixed_precision are enums in the scripts (importing the library would
    slow --help down): they must offer exactly the values the library accepts."""
    from absl import flags

    load_script(name)
    expected = {"strategy": STRATEGIES, "mixed_precision": PRECISIONS}
    checked = [flag for flag in expected if flag in flags.FLAGS]
    for flag in checked:
        assert flags.FLAGS[flag].parser.enum_values == list(expected[flag]), flag
    assert "strategy" in checked or name == "evaluate"


def test_train_default_workdir_names_the_config_variant(load_script):
    from absl import flags

    train = load_script("train")
    flags.FLAGS["config"].parse(f"{REPO / 'configs' / 'camvid.py'}:model=pspnet,output_stride=16")
    assert train.config_name() == "camvid_model_pspnet_output_stride_16"
    flags.FLAGS["config"].parse(str(REPO / "configs" / "smoke.py"))
    assert train.config_name() == "smoke"
