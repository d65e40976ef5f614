"""Training faults: checkpoints and backups written atomically, damaged backups on resume,
misspelt builder options reported before building."""

import os

import keras
import numpy as np
import pytest
from config_files import load_config, shipped_configs

from keras_fusionseg import models
from keras_fusionseg.training import callbacks as callbacks_lib
from keras_fusionseg.training import config as config_lib
from keras_fusionseg.training import trainer


class _Killed(Exception):
    pass


class _KillAfter(keras.callbacks.Callback):
    """Stands in for kill -9: leaves training (and its backup) after `steps` steps."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.steps:
            raise _Killed


def _model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    return model


_X = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
_Y = np.random.default_rng(1).normal(size=(16, 2)).astype("float32")


def _fit(model, backup_dir, steps=None):
    backup = callbacks_lib.SafeBackupAndRestore(str(backup_dir), save_freq=1)
    extra = [_KillAfter(steps)] if steps else []
    try:
        model.fit(_X, _Y, batch_size=4, epochs=2, callbacks=[backup, *extra], verbose=0)
    except _Killed:
        pass
    return backup


def _killed_run(backup_dir, steps=3):
    model = _model()
    _fit(model, backup_dir, steps)
    return model


def _resume(backup_dir):
    """Restores into a fresh model and returns (callback, restored optimizer step)."""
    model = _model()
    backup = callbacks_lib.SafeBackupAndRestore(str(backup_dir), save_freq=1)
    backup.set_model(model)
    backup.on_train_begin()
    return backup, int(model.optimizer.iterations.numpy())


def _damage(path):
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def test_backup_resumes_from_the_newest_pair(tmp_path):
    _killed_run(tmp_path / "backup", steps=3)
    backup, step = _resume(tmp_path / "backup")
    assert step == 3
    assert backup.restored_from[0].endswith("latest.weights.h5")
    assert backup.restored_from[2]["step"] == 3
    assert trainer.read_backup_state(str(tmp_path / "backup")) == (0, 2)


def test_half_written_weights_resume_from_the_previous_backup(tmp_path, capsys):
    _killed_run(tmp_path / "backup", steps=3)
    _damage(tmp_path / "backup" / "latest.weights.h5")
    backup, step = _resume(tmp_path / "backup")
    assert step == 2 and backup.restored_from[0].endswith("previous.weights.h5")
    assert "latest.weights.h5: unreadable" in capsys.readouterr().out
    # and training goes on from there
    model = _model()
    _fit(model, tmp_path / "backup")
    assert int(model.optimizer.iterations.numpy()) == 2 + 8  # restored step, then 2 epochs of 4


def test_damaged_record_falls_back_to_the_matching_pair(tmp_path):
    _killed_run(tmp_path / "backup", steps=3)
    (tmp_path / "backup" / "training_metadata.json").write_text('{"epoch": 0, "ba')
    assert trainer.read_backup_state(str(tmp_path / "backup")) == (0, 1)  # the previous record
    backup, step = _resume(tmp_path / "backup")
    assert step == 2 and backup.restored_from[1].endswith("previous_training_metadata.json")


def test_pair_split_by_a_kill_is_not_mixed(tmp_path):
    """Killed after the new weights were renamed into place, before the new record."""
    _killed_run(tmp_path / "backup", steps=3)
    folder = tmp_path / "backup"
    os.remove(folder / "training_metadata.json")
    backup, step = _resume(folder)
    assert step == 2 and backup.restored_from[0].endswith("previous.weights.h5")


def test_no_usable_backup_is_a_clear_error_naming_the_files(tmp_path):
    _killed_run(tmp_path / "backup", steps=3)
    for name in ("latest.weights.h5", "previous.weights.h5"):
        _damage(tmp_path / "backup" / name)
    for _ in range(2):  # the same message every time, not a different crash
        with pytest.raises(ValueError) as caught:
            _resume(tmp_path / "backup")
        message = str(caught.value)
        assert "latest.weights.h5: unreadable" in message
        assert "previous.weights.h5: unreadable" in message
        assert "Delete that folder" in message


def test_backup_interrupted_while_saving_keeps_the_previous_files(tmp_path, monkeypatch):
    model = _killed_run(tmp_path / "backup", steps=3)
    folder = tmp_path / "backup"
    before = {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}

    def half_write(path, overwrite=True):
        with open(path, "wb") as handle:
            handle.write(b"\x89HDF\r\n partial")
        raise _Killed

    monkeypatch.setattr(model, "save_weights", half_write)
    backup = callbacks_lib.SafeBackupAndRestore(str(folder), save_freq=1)
    backup.set_model(model)
    with pytest.raises(_Killed):
        backup._save_model()
    after = {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}
    assert after == before


def test_checkpoint_interrupted_while_saving_keeps_the_previous_file(tmp_path, monkeypatch):
    model = _model()
    path = tmp_path / "checkpoints" / "best.keras"
    callbacks_lib.save_model_atomically(model, str(path))
    good = path.read_bytes()
    keras.models.load_model(path, compile=False)

    def half_write(filepath, overwrite=True):
        with open(filepath, "wb") as handle:
            handle.write(good[: len(good) // 2])
        raise _Killed

    monkeypatch.setattr(model, "save", half_write)
    with pytest.raises(_Killed):
        callbacks_lib.save_model_atomically(model, str(path))
    checkpoint = callbacks_lib.AtomicModelCheckpoint(str(path), save_best_only=False)
    checkpoint.set_model(model)
    with pytest.raises(_Killed):
        checkpoint.on_epoch_end(0, {"loss": 1.0})
    assert path.read_bytes() == good
    assert os.listdir(path.parent) == ["best.keras"]


# ----------------------------------------------------------------------------------------
# Options passed through to builders: checked against their signatures before building.

CONFIGS = shipped_configs()  # every file, and configs/camvid.py's variants


def _smoke_config():
    return load_config("smoke")


def test_option_typos_are_named_with_a_hint_before_building(tmp_path, monkeypatch):
    config = _smoke_config()
    config.model.options = {**config.model.options, "aspp_filter": 16, "num_classes": 3}
    config.model.backbone = "resnet50"
    config.model.backbone_options = {"multigrid": (1, 2, 4)}

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the options were checked")

    monkeypatch.setattr(trainer, "build_model", no_build)
    with pytest.raises(ValueError) as caught:
        trainer.train(config, str(tmp_path / "run"))
    message = str(caught.value)
    assert "model.options has unknown option 'aspp_filter' for model 'deeplabv3plus' " in message
    assert "(did you mean 'aspp_filters'?)" in message
    assert "model.options sets 'num_classes'" in message
    assert (
        "model.backbone_options has unknown option 'multigrid' for backbone 'resnet50' "
        "(did you mean 'multi_grid'?)"
    ) in message


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_options_are_accepted(name):
    config = load_config(name)
    assert config_lib._model_option_problems(config) == []


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_default_and_tiny_options_are_accepted(name):
    spec = models.registry.get_model_spec(name)
    config = config_lib.default_config()
    config.model.name = name
    config.model.backbone = spec.tiny.get("backbone", "")
    config.model.backbone_options = dict(spec.tiny.get("backbone_options", {}))
    config.model.options = {
        key: value
        for key, value in spec.tiny.items()
        if key not in ("backbone", "backbone_options", "output_stride", "input_shape")
    }
    assert config_lib._model_option_problems(config) == []
    config.model.backbone = ""
    config.model.backbone_options = dict(spec.default_backbone_options)
    assert config_lib._model_option_problems(config) == []
