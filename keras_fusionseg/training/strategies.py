"""`tf.distribute` strategies by name, and the fix that lets Keras `fit` run multi-worker.

Keras 3 `fit` under `MultiWorkerMirroredStrategy` fails (keras-team/keras issue 20585):
`_maybe_symbolic_build` all-reduces a whole per-replica data batch across workers just to
get shapes for building, and `reduce_per_replica` reduces scalar step outputs (loss and
metric values) with `axis=0`, which a scalar does not have. `distributed_fit_fix` swaps
in two narrow replacements, only while a multi-worker strategy trains and only for those
two cases: the build takes this worker's first local replica batch (it only needs
shapes), and scalars are averaged over replicas with `axis=None`. Everything else goes to
the original Keras code. The build replacement is also used under `MirroredStrategy`,
where the same whole-batch reduction fails when replicas hold batches of different sizes
(e.g. the last, partial validation batch).
"""

import contextlib
import json
import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")


def _num_workers_in_tf_config():
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ValueError(f"Environment variable TF_CONFIG is not valid JSON: {error}") from error
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name="auto"):
    """Returns a `tf.distribute.Strategy`.

    Args:
        name: `"auto"` (multi_worker when TF_CONFIG lists several workers, mirrored on
            several GPUs, else TensorFlow's default strategy: one device, no distribution
            wrappers; a `OneDeviceStrategy` made training steps ~35% slower on a 2-core CPU),
            `"one_device"` (first GPU, else CPU),
            `"mirrored"` (all GPUs, else all logical CPU devices, so a CPU split with
            `tf.config.set_logical_device_configuration` acts as several replicas),
            `"multi_worker"` (MultiWorkerMirroredStrategy from TF_CONFIG, RING collectives)
            or `"tpu"`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {list(STRATEGIES)}, received {name!r}.")
    if name == "auto" and _num_workers_in_tf_config() > 1:
        name = "multi_worker"
    if name == "multi_worker":
        # Must come before anything initialises the TF context (e.g. listing logical devices).
        if "TF_CONFIG" not in os.environ:
            raise ValueError("`strategy='multi_worker'` needs the TF_CONFIG environment variable.")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) <= 1:
            return tf.distribute.get_strategy()
        name = "mirrored"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """True on the worker that writes checkpoints, logs and metrics (always in one process)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


# Keras releases whose private trainer internals `distributed_fit_fix` was tested against.
PATCH_TESTED_KERAS = ((3, 15),)


def _check_patchable_keras():
    """Refuses, with the supported versions named, a Keras the multi-replica fix was not tested on."""
    import keras

    version = tuple(int(part) for part in keras.__version__.split(".")[:2])
    tested = ", ".join(f"{major}.{minor}.x" for major, minor in PATCH_TESTED_KERAS)
    problem = None
    if version not in PATCH_TESTED_KERAS:
        problem = f"it was tested with Keras {tested} only, this is Keras {keras.__version__}"
    else:
        try:
            from keras.src.backend.tensorflow import trainer

            trainer.TensorFlowTrainer._maybe_symbolic_build  # noqa: B018
            trainer.reduce_per_replica  # noqa: B018
        except (ImportError, AttributeError) as error:
            problem = f"Keras {keras.__version__} lacks the internals it replaces ({error})"
    if problem:
        raise RuntimeError(
            "Training on several replicas needs keras_fusionseg's patch of Keras' private "
            f"trainer internals (keras-team/keras#20585), and {problem}. Install Keras "
            f"{tested} (`pip install 'keras=={PATCH_TESTED_KERAS[-1][0]}.{PATCH_TESTED_KERAS[-1][1]}.*'`) "
            "or train with --strategy=one_device."
        )


@contextlib.contextmanager
def distributed_fit_fix(strategy):
    """Context in which Keras `fit` works under multi-worker and multi-replica strategies.

    A no-op on one replica. See the module docstring for what is replaced.
    """
    if strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ):
        yield
        return
    _check_patchable_keras()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    from keras.src.backend.tensorflow import trainer as tf_trainer

    trainer_class = tf_trainer.TensorFlowTrainer
    original_build = trainer_class._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def local_batch(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local_batch, next(batches))
                break
        return original_build(self, iterator=None, data_batch=data_batch)

    def reduce_per_replica(values, strategy_, reduction):
        if not multi_worker or reduction not in ("auto", "mean"):
            return original_reduce(values, strategy_, reduction)

        def reduce_one(value):
            if isinstance(value, tf.distribute.DistributedValues) or tf.is_tensor(value):
                return strategy_.reduce("MEAN", value, axis=None)
            return value

        return tf.nest.map_structure(reduce_one, values)

    trainer_class._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        trainer_class._maybe_symbolic_build = original_build
        tf_trainer.reduce_per_replica = original_reduce
