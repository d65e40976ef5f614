"""A saved model describes itself: build arguments, loss_spec and dataset survive `.keras`
files, and `describe_model` answers "what is this model, trained on which data" for scripts."""

import json

import keras
import numpy as np
import pytest
from registered_models import REGISTERED

from keras_fusionseg import models
from keras_fusionseg.export import predict_files
from keras_fusionseg.models import presets
from keras_fusionseg.models.segmentation_model import jsonable

NUM_CLASSES = 3


def tiny_model(name, **overrides):
    kwargs = {**models.get_model_spec(name).tiny, **overrides}
    return models.build(name, num_classes=NUM_CLASSES, aux_outputs=True, **kwargs)


def saved_and_loaded(model, path):
    model.save(path)
    return keras.models.load_model(path)


@pytest.mark.parametrize("name", REGISTERED)
def test_keras_round_trip_returns_loss_spec_and_build_arguments(name, tmp_path):
    spec = models.get_model_spec(name)
    tiny = dict(spec.tiny)
    model = tiny_model(name)
    # The record is what `build` was called with (defaults filled in, JSON values).
    recorded = model.build_arguments
    assert recorded["model"] == name and recorded["num_classes"] == NUM_CLASSES
    assert recorded["aux_outputs"] is True
    assert recorded["backbone"] == tiny.pop("backbone")
    defaults = (
        spec.default_backbone_options if recorded["backbone"] == spec.default_backbone else {}
    )
    assert recorded["backbone_options"] == jsonable({**defaults, **tiny.pop("backbone_options")})
    assert recorded["output_stride"] == spec.default_output_stride
    assert recorded["input_shape"] == [None, None, 3]
    assert recorded["options"] == jsonable(tiny)
    assert set(model.loss_spec) == set(model.output)  # a dict: aux_outputs=True

    clone = saved_and_loaded(model, tmp_path / f"{name}.keras")
    assert isinstance(clone, models.SegmentationModel)
    assert clone.loss_spec == model.loss_spec
    assert all(isinstance(entry, tuple) for entry in clone.loss_spec.values())
    assert clone.build_arguments == recorded
    assert clone.output_stride == spec.default_output_stride
    # The arguments are complete: they rebuild the same architecture.
    rebuilt = models.build(**models.rebuild_kwargs(clone))
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in model.weights]
    assert rebuilt.loss_spec == model.loss_spec


def test_training_dataset_record_survives_save_and_is_what_describe_model_reports(tmp_path):
    model = tiny_model("deeplabv3plus")
    models.record_dataset(model, "camvid", data_dir="/data/camvid", num_classes=11)
    with pytest.raises(ValueError, match="Unknown dataset fields"):
        models.record_dataset(model, "camvid", datadir="/typo")
    path = tmp_path / "model.keras"
    clone = saved_and_loaded(model, path)
    assert clone.dataset == {"name": "camvid", "data_dir": "/data/camvid", "num_classes": 11}
    # A workdir config next to the file disagrees: the model's own record wins.
    (tmp_path / "config.json").write_text(json.dumps({"data": {"name": "voc"}}))
    info = models.describe_model(clone, path=path)
    assert info["dataset"]["name"] == "camvid" and info["sources"]["dataset"] == "model"
    assert info["model"] == "deeplabv3plus" and info["backbone"] == "mobilenetv2"
    assert info["loss_spec"] == model.loss_spec
    # Without loading: read from the `.keras` file itself (predict.py's route).
    assert models.describe_model(path=path)["dataset"]["data_dir"] == "/data/camvid"
    assert predict_files.dataset_name_for(path) == "camvid"


def test_checkpoints_saved_before_the_record_fall_back_to_the_workdir_config(tmp_path):
    model = tiny_model("pspnet")
    plain = keras.Model(model.inputs, model.output, name="pspnet")  # the old functional form
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    config = {
        "model": {"name": "pspnet", "backbone": "resnet50", "output_stride": 8},
        "data": {"name": "camvid", "data_dir": "/data/camvid"},
    }
    (workdir / "config.json").write_text(json.dumps(config))
    path = workdir / "checkpoints" / "best.keras"
    loaded = saved_and_loaded(plain, path)
    assert not isinstance(loaded, models.SegmentationModel)
    for source in (workdir, path):
        info = models.describe_model(loaded, path=source)
        assert info["dataset"] == {
            "name": "camvid",
            "data_dir": "/data/camvid",
            "num_classes": None,
        }
        assert info["model"] == "pspnet" and info["output_stride"] == 8
        assert info["num_classes"] == NUM_CLASSES  # from the logits
        assert info["sources"]["dataset"] == str(workdir / "config.json")
    assert predict_files.dataset_name_for(path) == "camvid"
    assert models.describe_model(loaded, path=tmp_path / "elsewhere")["dataset"] is None


def test_describe_model_reads_preset_metadata_and_export_config(tmp_path):
    metadata = {
        "dataset": {"name": "camvid"},
        "training": {"config": {"model": {"name": "deeplabv3plus"}, "data": {"name": "camvid"}}},
    }
    info = models.describe_model(None, metadata=metadata)
    assert info["dataset"]["name"] == "camvid" and info["model"] == "deeplabv3plus"
    assert info["sources"] == {"build": "preset", "dataset": "preset"}
    (tmp_path / "export_config.json").write_text(json.dumps({"dataset": "synthetic_shapes"}))
    tflite = tmp_path / "model.tflite"
    assert models.describe_model(path=tflite)["dataset"]["name"] == "synthetic_shapes"
    assert predict_files.dataset_name_for(tflite) == "synthetic_shapes"


def test_inference_model_keeps_the_description_without_aux_outputs(tmp_path):
    model = tiny_model("encnet")
    models.record_dataset(model, "camvid")
    served = presets.inference_model(model)
    assert isinstance(served, models.SegmentationModel)
    assert served.build_arguments == {**model.build_arguments, "aux_outputs": False}
    assert served.loss_spec == {"logits": (models.SEGMENTATION, 1.0)}
    clone = saved_and_loaded(served, tmp_path / "served.keras")
    assert clone.dataset == {"name": "camvid"} and clone.build_arguments["model"] == "encnet"
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(clone(x), model(x)["logits"], atol=1e-5)


def test_rebuild_kwargs_refuses_what_the_record_cannot_rebuild():
    with pytest.raises(ValueError, match="records no `models.build` arguments"):
        models.rebuild_kwargs(keras.Sequential([keras.Input((4, 4, 3))]))
    model = tiny_model("deeplabv3")
    model.build_arguments = {**model.build_arguments, "backbone": {"name": "x", "class": "F"}}
    with pytest.raises(ValueError, match="backbone object"):
        models.rebuild_kwargs(model)
    with pytest.raises(ValueError, match="Unknown build_arguments"):
        model.build_arguments = {"modle": "deeplabv3"}
