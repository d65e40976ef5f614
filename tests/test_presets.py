"""Presets: packaging a trained checkpoint, `from_preset`, metadata checks, `--preset` on the
scripts, and every preset shipped in the package (loads, complete metadata, checksum)."""

import io
import json
import os
import pathlib
import shutil

import keras
import numpy as np
import pytest
from absl import flags
from conftest import SHARED_DATA
from PIL import Image

from keras_fusionseg import models
from keras_fusionseg.models import presets
from keras_fusionseg.training import trainer
from keras_fusionseg.training.config import default_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
NAME = "deeplabv3plus_tiny_shapes"


def smoke_config():
    """The training config of the tiny model below (configs/smoke.py's model and data)."""
    config = default_config()
    config.model.name = "deeplabv3plus"
    config.model.backbone = "mobilenetv2"
    config.model.backbone_options = {"alpha": 0.35}
    config.model.options = {"aspp_filters": 16, "decoder_filters": 16, "low_level_filters": 8}
    config.data.options = {"num_images": 4, "image_size": (64, 64)}
    config.data.crop_size = (64, 64)
    config.eval.max_images = 2
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DeepLabv3+ trained for a few steps, its workdir and a checksum image."""
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("trained")
    config = smoke_config()
    model = models.build(
        "deeplabv3plus",
        num_classes=6,
        backbone="mobilenetv2",
        backbone_options={"alpha": 0.35},
        aspp_filters=16,
        decoder_filters=16,
        low_level_filters=8,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (4, 64, 64, 3)).astype("float32")
    labels = (images.mean(-1) > 127).astype("int32") + (images[..., 0] > 200)
    model.fit(images, labels, batch_size=2, epochs=2, verbose=0)
    workdir = folder / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    checkpoint = workdir / "checkpoints" / "final.keras"
    model.save(checkpoint)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    metrics = {"mean_iou": 0.25, "checkpoint": str(checkpoint), "train_steps": 4}
    metrics.update(train_seconds=90.0, resumed_from=None)
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    data_root = folder / "data"
    (data_root / "shapes").mkdir(parents=True)
    image = rng.integers(0, 256, (45, 61, 3), np.uint8)
    Image.fromarray(image).save(data_root / "shapes" / "val_0.png")
    keras.backend.clear_session()
    return {
        "checkpoint": str(checkpoint),
        "workdir": str(workdir),
        "data_root": str(data_root),
        "image": image,
        "model": keras.models.load_model(checkpoint, compile=False),
    }


@pytest.fixture(scope="module")
def preset_root(trained, tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    presets.save_preset(
        trained["checkpoint"],
        trained["workdir"],
        NAME,
        data_root=trained["data_root"],
        checksum_image="shapes/val_0.png",
        output_root=str(root),
        config_file=str(ROOT / "configs" / "smoke.py"),
    )
    return root


@pytest.fixture
def presets_env(preset_root, monkeypatch):
    """The tests' presets, found by name as the package's are."""
    monkeypatch.setenv(presets.PRESETS_DIR_ENV, str(preset_root))
    return preset_root


def copy_preset(preset_root, tmp_path, name="broken_preset"):
    root = tmp_path / "presets"
    shutil.copytree(preset_root / NAME, root / name)
    return root, root / name


def edit_metadata(folder, change):
    path = folder / presets.METADATA_FILE
    metadata = json.loads(path.read_text())
    change(metadata)
    path.write_text(json.dumps(metadata))


def test_round_trip_gives_the_checkpoint_logits(trained, preset_root):
    assert presets.list_presets(preset_root) == [NAME]
    model = models.from_preset(NAME, root=preset_root)
    for shape in ((1, 45, 61, 3), (2, 64, 80, 3)):  # any size, as the checkpoint
        x = np.random.default_rng(1).uniform(0, 255, shape).astype("float32")
        stored = np.asarray(model(x))
        original = np.asarray(trained["model"](x, training=False))
        assert stored.shape == original.shape == (*shape[:3], 6)
        # float16 storage of float32 weights: small, not zero, differences
        np.testing.assert_allclose(stored, original, atol=5e-3 * np.ptp(original) + 1e-4)
        assert np.mean(stored.argmax(-1) == original.argmax(-1)) > 0.99


@pytest.mark.slow
def test_float32_storage_is_exact(trained, tmp_path):
    presets.save_preset(
        trained["checkpoint"],
        trained["workdir"],
        "exact",
        data_root=trained["data_root"],
        checksum_image="shapes/val_0.png",
        output_root=str(tmp_path),
        storage_dtype="float32",
    )
    x = trained["image"][None].astype("float32")
    stored = np.asarray(models.from_preset("exact", root=tmp_path)(x))
    np.testing.assert_array_equal(stored, np.asarray(trained["model"](x, training=False)))
    metadata = models.load_preset_metadata("exact", root=tmp_path)
    assert metadata["weights"]["storage_check"]["max_abs_logits_diff"] == 0.0


@pytest.mark.slow
def test_evaluate_records_the_val_change(trained, tmp_path):
    _, metadata = presets.save_preset(
        trained["checkpoint"],
        trained["workdir"],
        "scored",
        data_root=trained["data_root"],
        checksum_image="shapes/val_0.png",
        output_root=str(tmp_path),
        evaluate=True,
    )
    check = metadata["weights"]["storage_check"]
    assert check["val_images"] == 2  # the training config's eval.max_images
    assert check["val_mean_iou_change_points"] == pytest.approx(
        100 * (check["val_mean_iou"] - 0.25), abs=1e-3
    )
    model = models.from_preset("scored", root=tmp_path)
    rescored = trainer.evaluate_config(presets.training_config(metadata), model, verbose=0)
    assert rescored["mean_iou"] == pytest.approx(check["val_mean_iou"])


def test_metadata_records_provenance(trained, preset_root):
    metadata = models.load_preset_metadata(NAME, root=preset_root)
    dataset = metadata["dataset"]
    assert dataset["name"] == "synthetic_shapes" and dataset["ignore_label"] == 255
    assert len(dataset["class_names"]) == len(dataset["palette"]) == 6
    training = metadata["training"]
    assert training["config"]["model"]["backbone_options"] == {"alpha": 0.35}
    assert "def get_config" in training["config_file_text"]
    assert training["config_file"] == os.path.join("configs", "smoke.py")
    assert training["metrics"]["mean_iou"] == 0.25
    assert training["minutes"] == 1.5 and training["steps"] == 4
    assert training["machine"]["cpu"] and training["machine"]["cores"] >= 1
    check = metadata["weights"]["storage_check"]
    assert 0 < check["max_abs_logits_diff"] < 0.05 and check["class_id_agreement"] > 0.99
    # the checksum is of the stored model's class ids on the named image
    checksum = metadata["checksum"]
    assert checksum["image"] == os.path.join("shapes", "val_0.png")
    ids = np.asarray(models.from_preset(NAME, root=preset_root)(trained["image"][None]))
    ids = ids[0].argmax(-1)
    assert presets.class_ids_sha256(ids) == checksum["class_ids_sha256"]
    assert sum(checksum["class_pixel_counts"]) == 45 * 61
    result = presets.check_preset_checksum(NAME, trained["data_root"], root=preset_root)
    assert result["passed"] and result["sha256_equal"] and result["agreement"] == 1.0


def test_weights_round_trip_bit_exactly_and_byte_planes_pack_float16_smaller():
    rng = np.random.default_rng(0)
    arrays = {
        "conv/kernel": rng.normal(0, 0.05, (3, 3, 64, 64)).astype("float16"),
        "bn/moving_variance": rng.uniform(0.5, 2e5, (32,)).astype("float32"),
        "seed_generator/state": np.array([7, 0], "uint32"),
        "scalar": np.array(1.5, "float16"),
        "empty": np.zeros((0, 4), "float16"),
    }
    data = presets.write_weights(arrays)
    restored = presets.read_weights(data)
    assert list(restored) == list(arrays)
    for path, array in arrays.items():
        assert restored[path].dtype == array.dtype and restored[path].shape == array.shape, path
        assert restored[path].tobytes() == array.tobytes(), path
    plain = io.BytesIO()
    np.savez_compressed(
        plain, **{presets.PATHS_KEY: np.array(list(arrays))}, w0=arrays["conv/kernel"]
    )
    kernel_only = presets.write_weights({"conv/kernel": arrays["conv/kernel"]})
    assert len(kernel_only) < 0.97 * len(plain.getvalue())  # 0.949 with this seed
    # Presets written before the byte-plane layout (plain arrays, no layout key) still load.
    old = io.BytesIO()
    np.savez_compressed(old, **{presets.PATHS_KEY: np.array(["a"])}, w0=arrays["conv/kernel"])
    assert presets.read_weights(old.getvalue())["a"].tobytes() == arrays["conv/kernel"].tobytes()


def test_checksum_check_fails_for_other_weights(trained, preset_root, tmp_path):
    root, folder = copy_preset(preset_root, tmp_path)
    arrays = presets.read_weights((folder / presets.WEIGHTS_FILE).read_bytes())
    arrays = {p: (a[::-1].copy() if a.ndim == 4 else a) for p, a in arrays.items()}
    (folder / presets.WEIGHTS_FILE).write_bytes(presets.write_weights(arrays))
    digest = presets.file_sha256(folder / presets.WEIGHTS_FILE)
    edit_metadata(folder, lambda m: m["weights"].update(sha256=digest))
    result = presets.check_preset_checksum("broken_preset", trained["data_root"], root=root)
    assert not result["passed"] and not result["sha256_equal"]


def test_every_missing_field_is_named(preset_root, tmp_path):
    root, folder = copy_preset(preset_root, tmp_path)
    models.from_preset("broken_preset", root=root)  # the copy itself is complete

    def drop(metadata):
        del metadata["dataset"]["license"]
        del metadata["training"]["machine"]["cpu"]
        metadata["checksum"]["class_ids_sha256"] = ""

    edit_metadata(folder, drop)
    with pytest.raises(ValueError) as error:
        models.from_preset("broken_preset", root=root)
    message = str(error.value)
    assert "'broken_preset'" in message
    for field in ("dataset.license", "training.machine.cpu", "checksum.class_ids_sha256"):
        assert f"missing {field!r}" in message
    assert "dataset.class_names" not in message


@pytest.mark.parametrize("field", presets.REQUIRED_FIELDS)
def test_each_required_field_is_checked(preset_root, tmp_path, field):
    metadata = json.loads((preset_root / NAME / presets.METADATA_FILE).read_text())
    presets.check_metadata(metadata, NAME)
    *parents, last = field.split(".")
    target = metadata
    for key in parents:
        target = target[key]
    del target[last]
    with pytest.raises(ValueError, match=f"{NAME!r}.*missing {field!r}"):
        presets.check_metadata(metadata, NAME)


def test_inconsistent_palette_is_refused(preset_root, tmp_path):
    root, folder = copy_preset(preset_root, tmp_path)
    edit_metadata(folder, lambda m: m["dataset"]["palette"].pop())
    with pytest.raises(ValueError, match="5 palette colours for 6 class names"):
        models.from_preset("broken_preset", root=root)


def test_damaged_weights_are_refused(preset_root, tmp_path):
    root, folder = copy_preset(preset_root, tmp_path)
    with open(folder / presets.WEIGHTS_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="does not match the sha256"):
        models.from_preset("broken_preset", root=root)


def test_unknown_name_suggests_and_lists(preset_root, tmp_path):
    with pytest.raises(ValueError) as error:
        models.from_preset("deeplabv3plus_tiny_shape", root=preset_root)
    message = str(error.value)
    assert "Unknown preset 'deeplabv3plus_tiny_shape'" in message
    assert f"Did you mean {NAME!r}?" in message and f"Available presets: {NAME}." in message
    with pytest.raises(ValueError, match="Available presets: none"):
        models.from_preset("anything", root=tmp_path / "empty")


def test_no_presets_is_an_empty_list(tmp_path, monkeypatch):
    monkeypatch.setenv(presets.PRESETS_DIR_ENV, str(tmp_path / "absent"))
    assert models.list_presets() == []
    (tmp_path / "absent" / "not_a_preset").mkdir(parents=True)  # no metadata.json
    assert models.list_presets() == []
    monkeypatch.delenv(presets.PRESETS_DIR_ENV)
    assert presets.presets_root() == presets.PACKAGE_PRESETS_DIR
    assert isinstance(models.list_presets(), list)


def test_env_var_and_folder_path_find_presets(presets_env):
    assert models.list_presets() == [NAME]
    assert models.from_preset(NAME).output_shape == (None, None, None, 6)
    assert models.from_preset(str(presets_env / NAME)).output_shape == (None, None, None, 6)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_script(module, argv):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["script", *argv])
    module.main([])


@pytest.mark.slow
def test_make_preset_script_refuses_to_overwrite(trained, tmp_path, load_script, capsys):
    script = load_script("make_preset")
    argv = [
        f"--checkpoint={trained['checkpoint']}",
        f"--workdir={trained['workdir']}",
        "--name=shapes_cli",
        f"--output_root={tmp_path}",
        f"--data_root={trained['data_root']}",
        "--checksum_image=shapes/val_0.png",
    ]
    run_script(script, argv)
    assert "Preset 'shapes_cli' ->" in capsys.readouterr().out
    stamp = (tmp_path / "shapes_cli" / presets.METADATA_FILE).stat().st_mtime_ns
    with pytest.raises(ValueError, match="already exists; pass --overwrite"):
        run_script(script, argv)
    assert (tmp_path / "shapes_cli" / presets.METADATA_FILE).stat().st_mtime_ns == stamp
    run_script(script, [*argv, "--overwrite", "--description=again"])
    assert models.load_preset_metadata("shapes_cli", root=tmp_path)["description"] == "again"
    assert sorted(os.listdir(tmp_path)) == ["shapes_cli"]  # no staging folder left


def test_make_preset_refuses_incomplete_inputs(trained, tmp_path):
    arguments = dict(data_root=trained["data_root"], output_root=str(tmp_path))
    with pytest.raises(ValueError, match="Checksum image .* does not exist"):
        presets.save_preset(
            trained["checkpoint"], trained["workdir"], "a", checksum_image="nope.png", **arguments
        )
    with pytest.raises(ValueError, match="Preset name must be lowercase"):
        presets.save_preset(
            trained["checkpoint"], trained["workdir"], "A-b", checksum_image="x", **arguments
        )
    workdir = tmp_path / "resumed"
    shutil.copytree(trained["workdir"], workdir)
    metrics = json.loads((workdir / "metrics.json").read_text())
    metrics["resumed_from"] = {"epoch": 2, "batch": 0}
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ValueError, match="resumed run.*--train_minutes"):
        presets.save_preset(
            trained["checkpoint"], str(workdir), "b", checksum_image="shapes/val_0.png", **arguments
        )
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_predict_script_with_preset(presets_env, trained, in_tmp, load_script, capsys):
    script = load_script("predict")
    Image.fromarray(trained["image"]).save(in_tmp / "street.png")
    # float32: the exact comparison below; the default (auto) may pick bfloat16 on this CPU.
    inputs = f"--inputs={in_tmp / 'street.png'}"
    run_script(script, [f"--preset={NAME}", inputs, "--precision=float32"])
    output = capsys.readouterr().out
    assert f"1 images (preset {NAME!r}, keras model)" in output
    assert "batch norms folded into their convs" in output  # the default inference path
    labels = np.asarray(Image.open("predictions/street_label.png"))
    expected = np.asarray(models.from_preset(NAME)(trained["image"][None]))[0].argmax(-1)
    np.testing.assert_array_equal(labels, expected)


def test_predict_script_preset_and_model_exclusive(presets_env, in_tmp, load_script):
    script = load_script("predict")
    with pytest.raises(flags.IllegalFlagValueError, match="Exactly one of \\(model, preset\\)"):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["predict", f"--preset={NAME}", "--model=m.keras", "--inputs=x.png"])
    with pytest.raises(flags.IllegalFlagValueError, match="Exactly one of \\(model, preset\\)"):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["predict", "--inputs=x.png"])
    del script


def test_evaluate_script_with_preset_uses_its_training_config(
    presets_env, in_tmp, load_script, monkeypatch
):
    from keras_fusionseg.export import saved_model
    from keras_fusionseg.export.optimize import count_batch_norms

    folded = []  # (batch norms before, after) of each model evaluate.py folded
    fold = saved_model.fold_batch_norm_if_functional

    def spy(model):
        result = fold(model)
        folded.append((count_batch_norms(model), count_batch_norms(result)))
        return result

    monkeypatch.setattr(saved_model, "fold_batch_norm_if_functional", spy)
    script = load_script("evaluate")
    run_script(script, [f"--preset={NAME}", f"--workdir={in_tmp / 'ev'}"])
    metrics = json.loads((in_tmp / "ev" / "eval_whole" / "metrics.json").read_text())
    assert metrics["checkpoint"] == f"preset:{NAME}"
    assert metrics["num_images"] == 2  # the preset's config.eval.max_images
    assert 0 <= metrics["mean_iou"] <= 1
    # Scored folded by default, as predict.py and the exported SavedModel run it.
    assert metrics["fold_batch_norm"] is True
    assert len(folded) == 1 and folded[0][0] > 0 and folded[0][1] == 0
    output_dir = in_tmp / "as_built"
    run_script(script, [f"--preset={NAME}", f"--output_dir={output_dir}", "--nofold_batch_norm"])
    as_built = json.loads((output_dir / "metrics.json").read_text())
    assert as_built["fold_batch_norm"] is False and len(folded) == 1
    assert as_built["mean_iou"] == pytest.approx(metrics["mean_iou"], abs=1e-4)
    with pytest.raises(flags.IllegalFlagValueError, match="checkpoint, preset"):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["evaluate", f"--preset={NAME}", "--checkpoint=c.keras"])


def test_zoo_table_scores_times_and_tabulates_a_preset(presets_env, in_tmp, load_script, capsys):
    from keras_fusionseg import data
    from keras_fusionseg.evaluation import evaluator
    from keras_fusionseg.export import fold_batch_norm_if_functional
    from keras_fusionseg.utils import counting

    script = load_script("zoo_table")
    argv = [f"--presets={NAME}", "--input_size=64,48", "--runs=1", "--max_images=2"]
    run_script(script, [*argv, "--nomultiscale", f"--json_out={in_tmp / 'zoo.json'}"])
    record = json.loads((in_tmp / "zoo.json").read_text())
    assert record["input_size"] == [64, 48] and record["fold_batch_norm"] is True
    [row] = record["rows"]
    trained = models.from_preset(NAME)
    assert row["params"] == counting.count_parameters(trained)["total"]
    assert row["macs"] == counting.count_macs(trained, (64, 48))
    assert row["training"] == "1.5 min, 4 steps"  # the workdir's metrics.json: 90 s, 4 steps
    assert row["images_per_second"] > 0 and "multiscale_miou" not in row
    # The row's score is evaluation.evaluate of the folded preset on the split's first images.
    records = data.load_split("synthetic_shapes", "val")
    expected = evaluator.evaluate(
        fold_batch_norm_if_functional(trained), records, num_classes=6, max_images=2, verbose=0
    )
    assert row["miou"] == pytest.approx(expected["mean_iou"], abs=1e-6)
    output = capsys.readouterr().out
    assert f"| `{NAME}` | {100 * row['miou']:.1f} | - | " in output  # no multi-scale column
    assert "timed at 64x48, batch 1, median of 1 interleaved rounds, batch norms folded" in output


def test_zoo_table_markdown_marks_missing_values(load_script):
    script = load_script("zoo_table")
    row = {
        "preset": "p",
        "miou": 0.5,
        "multiscale_miou": 0.5625,
        "params": 2_500_000,
        "macs": 3_210_000_000,
        "images_per_second": 12.345,
        "training": "60.0 min, 1,196 steps",
        "per_class_iou": {"sky": 0.9, "pole": None, "car": 0.0},
    }
    lines = script.markdown([row], ["sky", "pole", "car"]).splitlines()
    assert lines[2] == "| `p` | 50.0 | 56.2 | 2.50 | 3.21 | 12.35 | 60.0 min, 1,196 steps |"
    assert lines[-1] == "| `p` | 90.0 | - | 0.0 |"  # pole absent from the split: no IoU


@pytest.mark.slow
def test_export_script_with_preset(presets_env, trained, in_tmp, load_script):
    import tensorflow as tf

    script = load_script("export")
    run_script(script, [f"--preset={NAME}", f"--output={in_tmp / 'exported'}"])
    record = json.loads((in_tmp / "exported" / "export_config.json").read_text())
    assert record["model"] == f"preset:{NAME}" and record["dataset"] == "synthetic_shapes"
    assert record["fold_batch_norm"] is True  # the default export path
    loaded = tf.saved_model.load(str(in_tmp / "exported" / "saved_model"))
    images = tf.constant(trained["image"][None])
    ids = loaded.signatures["serving_default"](images=images)["class_ids"][0].numpy()
    expected = np.asarray(models.from_preset(NAME)(trained["image"][None]))[0].argmax(-1)
    np.testing.assert_array_equal(ids, expected)
    with pytest.raises(flags.IllegalFlagValueError, match="Exactly one of \\(model, preset\\)"):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["export", f"--preset={NAME}", "--model=m.keras", "--output=o"])


@pytest.mark.slow
def test_serve_script_with_preset(presets_env, tmp_path, load_script, capsys):
    script = load_script("serve")
    run_script(script, [f"--preset={NAME}", "--port=0", "--stop_after_seconds=0.5"])
    output = capsys.readouterr().out
    assert f"Serving {NAME!r} at http://127.0.0.1:" in output
    serving_line = next(line for line in output.splitlines() if line.startswith("Serving"))
    assert serving_line.endswith(f"/v1/models/{NAME}")
    saved_model, (class_names, _) = script.export_preset(NAME, str(tmp_path))
    assert os.path.isfile(os.path.join(saved_model, "saved_model.pb"))
    assert list(class_names) == list(models.load_preset_metadata(NAME)["dataset"]["class_names"])
    with pytest.raises(flags.IllegalFlagValueError, match="Exactly one of \\(saved_model, preset"):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["serve", f"--preset={NAME}", "--saved_model=x"])


# The presets shipped in the package (none yet: these tests then check nothing and pass).
SHIPPED = presets.list_presets(presets.PACKAGE_PRESETS_DIR)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_loads_with_complete_metadata(name):
    metadata = models.load_preset_metadata(name, root=presets.PACKAGE_PRESETS_DIR)
    assert metadata["name"] == name
    model = models.from_preset(name, root=presets.PACKAGE_PRESETS_DIR)
    num_classes = len(metadata["dataset"]["class_names"])
    assert model.output_shape == (None, None, None, num_classes)
    logits = np.asarray(model(np.full((1, 67, 45, 3), 127.0, np.float32)))
    assert logits.shape == (1, 67, 45, num_classes) and np.all(np.isfinite(logits))
    if metadata["dataset"]["name"] == "camvid":
        assert "research" in metadata["dataset"]["license"].lower()
        assert metadata["checksum"]["image"].startswith("camvid/images/val/")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_reproduces_its_checksum(name):
    metadata = models.load_preset_metadata(name, root=presets.PACKAGE_PRESETS_DIR)
    dataset = metadata["checksum"]["image"].split(os.sep)[0]
    if not (SHARED_DATA / dataset).is_dir():
        pytest.skip(f"{SHARED_DATA / dataset} not present")
    result = presets.check_preset_checksum(name, SHARED_DATA, root=presets.PACKAGE_PRESETS_DIR)
    assert result["passed"], result


def test_shipped_presets_fit_the_size_budget():
    total = sum(
        os.path.getsize(os.path.join(folder, file))
        for folder, _, files in os.walk(presets.PACKAGE_PRESETS_DIR)
        for file in files
    )
    assert total <= 60e6, f"presets take {total / 1e6:.1f} MB (issue 16: at most 60 MB)"


def test_training_config_of_an_older_preset_gets_fields_added_since():
    """A preset trained before a config field existed (e.g. `train.jit_compile`) still gives a
    valid config: the new field takes its default, stored values and free-form dicts stay."""
    from keras_fusionseg.training.config import check_fields

    config = default_config().to_dict()
    del config["train"]["jit_compile"]
    config["model"]["backbone_options"] = {}  # the default is {"alpha": 0.35}: must not come back
    config["train"]["epochs"] = 26
    restored = presets.training_config({"training": {"config": config}})
    check_fields(restored)
    assert restored.train.jit_compile is False
    assert restored.train.epochs == 26
    assert dict(restored.model.backbone_options) == {}
