"""Learning-rate schedule (poly with warm-up) and optimizers with per-paper weight decay."""

import keras
from keras import ops

PACKAGE = "keras_fusionseg"


@keras.saving.register_keras_serializable(package=PACKAGE)
class PolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """The "poly" policy with optional linear warm-up.

    DeepLabv3+ (Chen et al., ECCV 2018), Sec. 4, following ParseNet: after `warmup_steps`,
    lr = (base - end) * (1 - t / T) ** power + end with t the steps since warm-up and
    T = decay_steps - warmup_steps; during warm-up lr grows linearly from
    `warmup_start_factor * base` to base. After `decay_steps` the rate stays at `end`.

    Args:
        base_learning_rate: float > 0.
        decay_steps: int >= 1, total number of training steps.
        power: float, 0.9 in the papers.
        end_learning_rate: float >= 0.
        warmup_steps: int >= 0, smaller than `decay_steps`.
        warmup_start_factor: float in [0, 1].
    """

    def __init__(
        self,
        base_learning_rate,
        decay_steps,
        power=0.9,
        end_learning_rate=0.0,
        warmup_steps=0,
        warmup_start_factor=0.1,
    ):
        if base_learning_rate <= 0:
            raise ValueError(f"`base_learning_rate` must be > 0, received {base_learning_rate!r}.")
        if not isinstance(decay_steps, int) or decay_steps < 1:
            raise ValueError(f"`decay_steps` must be an integer >= 1, received {decay_steps!r}.")
        if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < decay_steps:
            raise ValueError(
                f"`warmup_steps` must be an integer in [0, decay_steps={decay_steps}), "
                f"received {warmup_steps!r}."
            )
        if not 0 <= warmup_start_factor <= 1:
            raise ValueError(
                f"`warmup_start_factor` must be in [0, 1], received {warmup_start_factor!r}."
            )
        self.base_learning_rate = float(base_learning_rate)
        self.decay_steps = decay_steps
        self.power = float(power)
        self.end_learning_rate = float(end_learning_rate)
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = float(warmup_start_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base, end = self.base_learning_rate, self.end_learning_rate
        span = float(self.decay_steps - self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        decayed = (base - end) * ops.power(1.0 - progress, self.power) + end
        if self.warmup_steps == 0:
            return decayed
        ramp = ops.minimum(step / self.warmup_steps, 1.0)
        warm = base * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * ramp)
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "decay_steps": self.decay_steps,
            "power": self.power,
            "end_learning_rate": self.end_learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": self.warmup_start_factor,
        }


def is_decayed(variable, decay_depthwise=False):
    """Weight decay applies to conv/dense kernels only, never to BN, biases or other params.

    Depthwise kernels are excluded by default, as in the DeepLab reference. This rule sees
    only names: a Keras 3 `DepthwiseConv2D` names its kernel "kernel" too, so `build_optimizer`
    also excludes those by identity (`depthwise_kernels`).
    """
    # Distributed updates may pass the per-device variable, named like ".../kernel:0".
    name = variable.name.split("/")[-1].split(":")[0]
    return name == "kernel" or (decay_depthwise and name == "depthwise_kernel")


def depthwise_kernels(model):
    """The kernels of `model`'s `DepthwiseConv2D` layers (nested layers included)."""
    return [
        layer.kernel
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.DepthwiseConv2D)
    ]


@keras.saving.register_keras_serializable(package=PACKAGE)
class SGDWithL2(keras.optimizers.SGD):
    """SGD with momentum plus the papers' L2 weight decay on kernels.

    The papers' weight decay is an L2 term `weight_decay / 2 * ||w||^2` added to the loss
    (coupled, so it passes through the momentum), unlike Keras' decoupled `weight_decay`.
    Its gradient `weight_decay * w` is added here, per variable, to kernels only (see
    `is_decayed`), which leaves the model untouched (no regularizers to build in).

    Args:
        l2: float >= 0, the papers' weight decay (e.g. 4e-5 for MobileNet/Xception, 1e-4 ResNet).
        decay_depthwise: bool, also decay depthwise kernels.
        **kwargs: `keras.optimizers.SGD` arguments (learning_rate, momentum, nesterov...).
    """

    def __init__(self, l2=0.0, decay_depthwise=False, **kwargs):
        super().__init__(**kwargs)
        if l2 < 0:
            raise ValueError(f"`l2` must be >= 0, received {l2!r}.")
        self.l2 = float(l2)
        self.decay_depthwise = bool(decay_depthwise)
        self._l2_excluded = set()

    def exclude_from_l2(self, variables):
        """No L2 term on `variables`, whatever their names (call before the first step)."""
        self._l2_excluded = {self._var_key(v) for v in variables}

    def update_step(self, gradient, variable, learning_rate):
        if (
            self.l2 > 0
            and is_decayed(variable, self.decay_depthwise)
            and self._var_key(variable) not in self._l2_excluded
        ):
            gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(variable, self.l2))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2, "decay_depthwise": self.decay_depthwise}


def build_optimizer(
    name,
    learning_rate,
    *,
    model,
    momentum=0.9,
    weight_decay=0.0,
    decay_depthwise=False,
    global_clipnorm=0.0,
):
    """`"sgd"` (momentum, coupled L2) or `"adamw"` (decoupled decay) over `model`'s variables.

    Args:
        name: str, `"sgd"` or `"adamw"`.
        learning_rate: float or schedule.
        model: the model being trained (AdamW excludes its non-kernel variables from decay).
        momentum: float, SGD momentum.
        weight_decay: float, L2 coefficient (SGD) or decoupled decay (AdamW).
        decay_depthwise: bool, also decay depthwise kernels.
        global_clipnorm: float, > 0 rescales the gradients (after cross-replica aggregation)
            so that their global norm is at most this; 0 leaves them as they are.
    """
    clipping = {"global_clipnorm": global_clipnorm} if global_clipnorm else {}
    undecayed_depthwise = [] if decay_depthwise else depthwise_kernels(model)
    if name == "sgd":
        optimizer = SGDWithL2(
            l2=weight_decay,
            decay_depthwise=decay_depthwise,
            learning_rate=learning_rate,
            momentum=momentum,
            **clipping,
        )
        optimizer.exclude_from_l2(undecayed_depthwise)
        return optimizer
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay, **clipping
        )
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if not is_decayed(v, decay_depthwise)]
            + undecayed_depthwise
        )
        return optimizer
    raise ValueError(f"`optimizer` must be 'sgd' or 'adamw', received {name!r}.")
