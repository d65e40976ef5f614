"""The training loop: Keras `fit` under a `tf.distribute` strategy, then a final evaluation.

`train` runs named steps: `prepare_run` -> `build_data` -> `build_compiled_model` ->
`build_callbacks` (their order is documented there) -> `fit` -> `finalize`.

Workdir layout: `config.json` (the resolved config), `backup/` (`SafeBackupAndRestore`; a
killed run re-run with the same command resumes from it, falling back to the previous backup
when the newest is damaged), `checkpoints/best.keras` (best validation mIoU),
`checkpoints/final.keras` (both written under a temporary name, then renamed), `logs/`
(TensorBoard), `training_curves.csv/.png`, `validation_overlays.png` (image | prediction |
label of the first validation images, after the last epoch), and `metrics.json`,
`confusion_matrix.csv`, `confusion_matrix.png` from the final evaluation. `where_to_look`
lists them after a run.
"""

import dataclasses
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_fusionseg import data, models
from keras_fusionseg.evaluation import evaluator
from keras_fusionseg.evaluation.confusion import ConfusionMatrixMetric
from keras_fusionseg.training import callbacks as callbacks_lib
from keras_fusionseg.training import strategies
from keras_fusionseg.training.batch_norm import RecalibrateBatchNorm
from keras_fusionseg.training.config import validate_config
from keras_fusionseg.training.losses import losses_from_loss_spec
from keras_fusionseg.training.optimizers import PolyDecay, build_optimizer
from keras_fusionseg.utils.precision import dtype_policy

OVERLAYS_PNG = "validation_overlays.png"


def dataset_info(config):
    """`DatasetInfo` of `data.name`; `data.num_classes` / `data.class_names` describe a
    folder without classes.txt or TFRecords."""
    return data.get_dataset_info(
        config.data.name,
        num_classes=config.data.num_classes or None,
        class_names=tuple(config.data.class_names) or None,
    )


def _source_arguments(config):
    """`data.load_split` keyword arguments of the config's data source."""
    # Label values are checked against the config's class count wherever it is declared.
    num_classes = config.data.num_classes or len(config.data.class_names) or None
    return {
        "data_dir": config.data.data_dir or None,
        **({"num_classes": num_classes} if num_classes else {}),
        **dict(config.data.options),
    }


def load_split(config, split):
    """`data.load_split` of the config's data source."""
    return data.load_split(config.data.name, split, **_source_arguments(config))


def build_model(config, num_classes):
    """The configured model (call inside the strategy scope)."""
    return models.build(
        config.model.name,
        num_classes=num_classes,
        input_shape=(None, None, 3),
        backbone=config.model.backbone or None,
        output_stride=config.model.output_stride,
        backbone_options=dict(config.model.backbone_options),
        aux_outputs=config.model.aux_outputs,
        **dict(config.model.options),
    )


def configure_batch_norm(model, synchronized=False, momentum=0.0):
    """Sets every BatchNormalization layer's `synchronized` flag and, if > 0, its `momentum`.

    `synchronized` computes batch statistics over all replicas. `momentum` matters for short
    runs: DeepLab's 0.9997 averages over ~3300 steps, so after a few hundred steps the
    moving statistics are still mostly their initial values and inference is wrong.
    """
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = bool(synchronized)
            if momentum:
                layer.momentum = float(momentum)
            count += 1
    return count


def read_backup_state(backup_dir):
    """(epoch, batch) recorded by `BackupAndRestore`, or None when there is no backup."""
    state = callbacks_lib.read_backup_metadata(backup_dir)
    if state is None:
        return None
    return state["epoch"], state["batch"]


def labels_for_outputs(loss_spec):
    """None for a logits-only model, else a `(images, labels)` map giving every output of
    `loss_spec` the same label map (each loss resizes it to its output)."""
    names = list(loss_spec)
    if names == ["logits"]:
        return None
    return lambda images, labels: (images, {name: labels for name in names})


def _monitor_name(loss_spec):
    return "val_mean_iou" if list(loss_spec) == ["logits"] else "val_logits_mean_iou"


def set_determinism(seed, deterministic):
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    """What the steps of `train` share (made by `prepare_run`).

    Attributes:
        config: the validated config.
        workdir: str, the output folder.
        strategy: the `tf.distribute.Strategy`.
        info: `DatasetInfo` of the config's dataset.
        chief: bool, whether this worker writes checkpoints, logs and metrics.
        backup_dir: str, this worker's `BackupAndRestore` folder.
        total_steps: int, epochs x steps per epoch (the learning-rate schedule's length).
        stop_step: int, the optimizer step at which training stops (`train.max_steps`).
        resumed: (epoch, batch) of the backup this run resumes from, or None.
    """

    config: Any
    workdir: str
    strategy: tf.distribute.Strategy
    info: data.DatasetInfo
    chief: bool
    backup_dir: str
    total_steps: int
    stop_step: int
    resumed: tuple | None

    @property
    def checkpoint_dir(self):
        return os.path.join(self.workdir, "checkpoints")

    @property
    def logdir(self):
        return os.path.join(self.workdir, "logs")

    @property
    def data_seed(self):
        """A resumed run draws new augmentations instead of replaying the first run's."""
        if self.resumed is None:
            return self.config.seed
        return self.config.seed + 1000 * self.resumed[0] + self.resumed[1] + 1


@dataclasses.dataclass(frozen=True)
class TrainingCallbacks:
    """The callbacks of `fit` (see `build_callbacks`) and what `finalize` needs of them.

    Attributes:
        callbacks: list, in the order Keras calls them.
        start_step: the `ReportStartStep` callback (the step `fit` started at).
        recalibrator: the `RecalibrateBatchNorm` callback (precise BN), or None (off).
    """

    callbacks: list
    start_step: callbacks_lib.ReportStartStep
    recalibrator: RecalibrateBatchNorm | None = None


def train(config, workdir, *, strategy="auto", mixed_precision=None, config_source="config"):
    """Trains `config`'s model in `workdir` and evaluates it; returns the final metrics dict.

    The steps, each a function of this module: `prepare_run` (check the config, make the
    strategy, find a backup to resume from), `build_data`, `build_compiled_model`,
    `build_callbacks`, `fit`, `finalize` (precise BN, `final.keras`, final evaluation,
    `metrics.json`).

    Args:
        config: `ml_collections.ConfigDict` (see `keras_fusionseg.training.config`).
        workdir: output folder; re-running with the same workdir resumes from its backup.
        strategy: a name for `strategies.make_strategy` or a `tf.distribute.Strategy`.
        mixed_precision: None (use `config.mixed_precision`), "", "mixed_float16" or
            "mixed_bfloat16"; logits stay float32.
        config_source: str naming the config in error messages.
    """
    run = prepare_run(
        config,
        workdir,
        strategy=strategy,
        mixed_precision=mixed_precision,
        config_source=config_source,
    )
    train_ds, val_ds = build_data(run)
    with dtype_policy(run.config.mixed_precision or "float32"):
        model = build_compiled_model(run)
        training_callbacks = build_callbacks(run, model, train_ds)
        history, train_seconds = fit(run, model, train_ds, val_ds, training_callbacks)
        return finalize(run, model, training_callbacks, history, train_seconds)


def prepare_run(config, workdir, *, strategy="auto", mixed_precision=None, config_source="config"):
    """Step 1: checks the config, makes the strategy, seeds, writes `config.json` (chief) and
    reads the backup state; returns a `TrainingRun`. Arguments as for `train`."""
    if mixed_precision is not None:
        config.mixed_precision = mixed_precision
    validate_config(config, workdir, source=config_source)
    info = dataset_info(config)
    if not isinstance(strategy, tf.distribute.Strategy):
        strategy = strategies.make_strategy(strategy)  # first: multi-worker needs a fresh TF
    set_determinism(config.seed, config.deterministic)
    chief = strategies.is_chief(strategy)
    print(f"{type(strategy).__name__}: {strategy.num_replicas_in_sync} replica(s)", flush=True)
    task_id = getattr(getattr(strategy, "cluster_resolver", None), "task_id", 0) or 0
    # Non-chief workers must not write where the chief writes.
    backup_dir = os.path.join(workdir, "backup" if chief else f"backup_worker_{task_id}")
    if chief:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    total_steps = config.train.epochs * config.train.steps_per_epoch
    stop_step = min(config.train.max_steps, total_steps) if config.train.max_steps else total_steps
    resumed = read_backup_state(backup_dir)
    if resumed:
        print(
            f"Resuming from backup {backup_dir}: epoch {resumed[0] + 1}, batch {resumed[1]}",
            flush=True,
        )
    return TrainingRun(
        config=config,
        workdir=workdir,
        strategy=strategy,
        info=info,
        chief=chief,
        backup_dir=backup_dir,
        total_steps=total_steps,
        stop_step=stop_step,
        resumed=resumed,
    )


def build_data(run):
    """Step 2: (training dataset, validation dataset) of `(images, labels)` batches."""
    config = run.config
    train_ds = training_dataset(config, run.info, run.data_seed)
    val_records = load_split(config, config.data.val_split)
    if config.train.validation_max_images:
        val_records = val_records.take(config.train.validation_max_images)
    # One image per replica: padded (ignore label) to the batch's largest size.
    val_ds = data.eval_pipeline(
        val_records, batch_size=run.strategy.num_replicas_in_sync, cache=config.data.cache
    )
    return train_ds, val_ds


def build_compiled_model(run):
    """Step 3: the configured model (recording its training dataset, `models.record_dataset`),
    its batch norm configured, compiled with the optimizer, losses (from its `loss_spec`) and
    mIoU / pixel-accuracy metrics, in the strategy scope. Call under the run's dtype policy."""
    config, info = run.config, run.info
    with run.strategy.scope():
        model = build_model(config, info.num_classes)
        # Before `fit`: best.keras and final.keras both say which data they were trained on.
        models.record_dataset(
            model,
            config.data.name,
            data_dir=config.data.data_dir or None,
            num_classes=info.num_classes,
            class_names=list(info.class_names),
            ignore_label=info.ignore_label,
        )
        configure_batch_norm(model, config.train.sync_batch_norm, config.train.bn_momentum)
        schedule = PolyDecay(
            config.train.learning_rate,
            run.total_steps,
            power=config.train.poly_power,
            warmup_steps=config.train.warmup_steps,
        )
        optimizer = build_optimizer(
            config.train.optimizer,
            schedule,
            model=model,
            momentum=config.train.momentum,
            weight_decay=config.train.weight_decay,
            decay_depthwise=config.train.decay_depthwise,
            global_clipnorm=config.train.global_clipnorm,
        )
        loss, loss_weights = losses_from_loss_spec(
            model.loss_spec,
            num_classes=info.num_classes,
            ignore_label=info.ignore_label,
            class_weights=list(config.train.class_weights) or None,
            ohem_fraction=config.train.ohem_fraction,
            loss_weight_overrides=dict(config.model.loss_weights),
        )
        metric_list = [
            ConfusionMatrixMetric(info.num_classes, info.ignore_label, "mean_iou"),
            ConfusionMatrixMetric(info.num_classes, info.ignore_label, "pixel_accuracy"),
        ]
        metrics = metric_list if loss_weights is None else {"logits": metric_list}
        model.compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            jit_compile=bool(config.train.jit_compile),
        )
    return model


def build_callbacks(run, model, train_ds):
    """Step 4: the callbacks of `fit`, as a `TrainingCallbacks`.

    Keras calls callbacks in list order; this order matters:

    1. `StopOnNaN`: raises on a non-finite loss before the backup below saves that step.
    2. `SafeBackupAndRestore`: restores weights and optimizer step at the start of `fit`;
       every later callback sees the restored state.
    3. `ReportStartStep`: reads the (restored) optimizer step `fit` starts at.
    4. `StopAtStep`: stops at `train.max_steps`, counted across resumes.
    5. `RecalibrateBatchNorm` (`train.bn_recalibration_batches` > 0, one replica only):
       precise BN before every validation, so validation and `best.keras` use it.

    On the chief only:

    6. `AtomicModelCheckpoint`: `checkpoints/best.keras` on the validation mIoU.
    7. `TensorBoardLogger`: `logs/`.
    8. `TrainingCurves`: `training_curves.csv/.png` (drops rows past the restored step).
    9. `PredictionOverlays` (`train.num_overlay_images` > 0): overlays in TensorBoard and
       `validation_overlays.png`.
    """
    config, info = run.config, run.info
    recalibration = config.train.bn_recalibration_batches
    if recalibration and run.strategy.num_replicas_in_sync > 1:
        print("train.bn_recalibration_batches is for one replica; skipped.", flush=True)
        recalibration = 0
    start_step = callbacks_lib.ReportStartStep()
    callback_list = [
        callbacks_lib.StopOnNaN(),
        callbacks_lib.SafeBackupAndRestore(
            run.backup_dir, save_freq=config.train.backup_every_steps
        ),
        start_step,
        callbacks_lib.StopAtStep(run.stop_step),
    ]
    recalibrator = None
    if recalibration:
        recalibrator = RecalibrateBatchNorm(train_ds.map(lambda images, *_: images), recalibration)
        callback_list.append(recalibrator)
    if run.chief:
        os.makedirs(run.checkpoint_dir, exist_ok=True)
        callback_list += [
            callbacks_lib.AtomicModelCheckpoint(
                os.path.join(run.checkpoint_dir, "best.keras"),
                monitor=_monitor_name(model.loss_spec),
                mode="max",
                save_best_only=True,
            ),
            callbacks_lib.TensorBoardLogger(run.logdir),
            callbacks_lib.TrainingCurves(run.workdir),
        ]
        if config.train.num_overlay_images:
            overlay = _overlay_examples(config, info, config.train.num_overlay_images)
            if overlay is not None:
                callback_list.append(
                    callbacks_lib.PredictionOverlays(
                        *overlay,
                        info.palette,
                        run.logdir,
                        ignore_label=info.ignore_label,
                        png_path=os.path.join(run.workdir, OVERLAYS_PNG),
                    )
                )
    return TrainingCallbacks(callback_list, start_step, recalibrator)


def fit(run, model, train_ds, val_ds, training_callbacks):
    """Step 5: Keras `fit` (labels repeated for every output of a multi-output model);
    returns (history, training seconds)."""
    relabel = labels_for_outputs(model.loss_spec)
    if relabel is not None:
        train_ds = train_ds.map(relabel)
        val_ds = val_ds.map(relabel)
    config = run.config
    start = time.time()
    with strategies.distributed_fit_fix(run.strategy):
        history = model.fit(
            train_ds,
            epochs=config.train.epochs,
            steps_per_epoch=config.train.steps_per_epoch,
            validation_data=val_ds,
            validation_freq=config.train.validation_every_epochs,
            callbacks=training_callbacks.callbacks,
            verbose=config.train.verbose,
        )
    return history, time.time() - start


def finalize(run, model, training_callbacks, history, train_seconds):
    """Step 6 (chief): precise BN, `checkpoints/final.keras`, the final evaluation and its
    reports (`metrics.json`, confusion matrix); returns the metrics dict. Other workers
    return `{"train_steps": ...}`."""
    steps_done = int(model.optimizer.iterations.numpy())
    if not run.chief:
        return {"train_steps": steps_done}
    if training_callbacks.recalibrator is not None:
        training_callbacks.recalibrator.recalibrate()  # the model `fit` trained: one trace
    final_path = os.path.join(run.checkpoint_dir, "final.keras")
    callbacks_lib.save_model_atomically(model, final_path)
    results = evaluate_config(run.config, model, run.info, verbose=run.config.train.verbose)
    resumed = run.resumed
    extra = {
        "checkpoint": final_path,
        "train_steps": steps_done,
        "start_step": training_callbacks.start_step.start_step,
        "train_seconds": round(train_seconds, 1),
        "resumed_from": None if resumed is None else {"epoch": resumed[0] + 1, "batch": resumed[1]},
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    evaluator.write_reports(results, run.workdir, extra)
    results.update(extra)
    return results


def training_dataset(config, info, seed):
    """The config's augmented, batched, repeating training pipeline."""
    records = data.load_encoded_split(
        config.data.name, config.data.train_split, **_source_arguments(config)
    )
    return data.training_pipeline(
        records,
        crop_size=tuple(config.data.crop_size),
        batch_size=config.data.batch_size,
        scale_range=tuple(config.data.scale_range) if config.data.scale_range else None,
        flip=config.data.flip,
        color_jitter=data.DEFAULT_COLOR_JITTER if config.data.color_jitter else None,
        ignore_label=info.ignore_label,
        seed=seed,
        deterministic=config.deterministic,
        drop_remainder=True,
        shuffle_buffer=config.data.shuffle_buffer,
        cache=config.data.cache,
        repeat=True,
    )


def _overlay_examples(config, info, count):
    records = load_split(config, config.data.val_split).take(count)
    examples = list(data.eval_pipeline(records).as_numpy_iterator())
    if not examples:
        return None
    shapes = {e[0].shape for e in examples}
    if len(shapes) > 1:  # images of different sizes: keep those shaped like the first
        examples = [e for e in examples if e[0].shape == examples[0][0].shape]
    images = np.concatenate([e[0] for e in examples])
    labels = np.concatenate([e[1] for e in examples])
    return images, labels


def evaluate_config(config, model, info=None, verbose=1):
    """Evaluates `model` on the config's validation split with the config's eval mode."""
    info = info or dataset_info(config)
    crop = tuple(config.eval.crop_size) or tuple(config.data.crop_size)
    return evaluator.evaluate(
        model,
        data.eval_pipeline(load_split(config, config.data.val_split)),
        num_classes=info.num_classes,
        ignore_label=info.ignore_label,
        class_names=list(info.class_names),
        mode=config.eval.mode,
        scales=tuple(config.eval.scales),
        flip=config.eval.flip,
        crop_size=crop,
        stride=tuple(config.eval.stride) or None,
        trimap_widths=tuple(config.eval.trimap_widths),
        trimap_band=config.eval.trimap_band,
        max_images=config.eval.max_images,
        verbose=verbose,
    )


def where_to_look(workdir):
    """Lines naming a finished run's outputs that exist, and the TensorBoard command."""
    outputs = (
        ("validation overlays (image | prediction | label)", OVERLAYS_PNG),
        ("confusion matrix", "confusion_matrix.png"),
        ("training curves", "training_curves.png"),
        ("metrics, per class", "metrics.json"),
        ("model", os.path.join("checkpoints", "final.keras")),
    )
    lines = [
        f"  {what}: {os.path.join(workdir, name)}"
        for what, name in outputs
        if os.path.exists(os.path.join(workdir, name))
    ]
    logdir = os.path.join(workdir, "logs")
    if os.path.isdir(logdir):
        lines.append(f"  TensorBoard (curves, overlays per epoch): tensorboard --logdir {logdir}")
    return lines
