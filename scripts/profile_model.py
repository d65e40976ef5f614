r"""Where inference time goes: a TensorFlow profiler trace of a model, summarised as tables.

Builds a registered model (or loads a --checkpoint / --preset), warms its `tf.function`'d
forward pass up, captures a profiler trace of --calls calls, then prints the op time of the
trace per TF op type (Conv2D, DepthwiseConv2dNative, the oneDNN _MklNative* ops, Mul, AddV2,
ResizeBilinear, ...), per model part (backbone / head), per Keras layer and for the top
individual ops, each as a percent of all op time in the trace.

    python scripts/profile_model.py --model=deeplabv3plus --backbone=resnet50 \
        --output_stride=16 --size=512x512 --json_out=profile_r50.json
    python scripts/profile_model.py --preset=deeplabv3plus_mobilenetv2_camvid --size=256x352

The trace is read with xprof (`pip install xprof`, in the `dev` extra): its
`framework_op_stats` tool, the table TensorBoard's profile tab shows, gives each op's self
time (time not spent in ops nested in it). On CPU every op runs on the host, so "time" is
the host threads' op time; ops that run in parallel on several threads each count fully, so
the sum can exceed the wall time of a call (both are printed). An op that another process
preempts counts its wait too: profile on a quiet machine, over several --calls. The trace
stays in --logdir for TensorBoard's or xprof's viewer.
"""

import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "deeplabv3plus", "Registered model name.")
flags.DEFINE_string("backbone", None, "Backbone name (default: the model's).")
flags.DEFINE_integer("output_stride", None, "Output stride 8, 16 or 32 (default: the model's).")
flags.DEFINE_string("options", "", "Model options: comma-separated key=value (Python literals).")
flags.DEFINE_string("backbone_options", "", "Backbone options: comma-separated key=value.")
flags.DEFINE_integer("num_classes", 21, "Number of classes.")
flags.DEFINE_string(
    "checkpoint", None, "Profile this .keras file or training workdir instead of --model."
)
flags.DEFINE_string("preset", None, "Profile this preset instead of --model.")
flags.mark_flags_as_mutual_exclusive(["checkpoint", "preset"])
flags.DEFINE_string("size", "512x512", "Input size: 'S' or 'HxW'.")
flags.DEFINE_integer("batch", 1, "Images per call.")
flags.DEFINE_integer("warmup", 3, "Calls before the trace starts (tracing, oneDNN set-up).")
flags.DEFINE_integer("calls", 5, "Calls captured in the trace.")
flags.DEFINE_bool(
    "fold_batch_norm",
    False,
    "Profile the model with batch norm folded into the convs (`export.fold_batch_norm`).",
)
flags.DEFINE_string("logdir", None, "Folder for the trace (default: a new temporary folder, kept).")
flags.DEFINE_integer("top", 20, "Rows of the top-ops and per-layer tables.")
flags.DEFINE_string("json_out", None, "Also write the summary as JSON here.")

MODEL_FLAGS = ("backbone", "output_stride", "options", "backbone_options")
OUTSIDE = "(outside the model)"
UNLISTED = "(ops past xprof's row limit)"


def strip_scope_suffix(component, names):
    """The layer name in `names` that the name-scope component stands for, else None.

    TensorFlow makes name scopes unique in a graph by appending `_<n>` ("block_4_project_1"
    for layer "block_4_project"); a layer name may itself end in `_<n>` ("conv1_1"), so the
    component is matched as it is first.
    """
    if component in names:
        return component
    stripped = re.sub(r"_\d+$", "", component)
    return stripped if stripped in names else None


def layer_of(op_name, model_name, layer_names):
    """The top-level Keras layer an op belongs to, from its name scope, or `OUTSIDE`.

    Keras runs each layer's call under `tf.name_scope(layer.name)` inside the model's, so an
    op of the model is named "<model>/<layer>/.../<op>" (e.g.
    "deeplabv3plus_1/aspp_1/pool_conv_1/convolution").
    """
    parts = op_name.split("/")
    if len(parts) < 2 or strip_scope_suffix(parts[0], {model_name}) is None:
        return OUTSIDE
    layer = strip_scope_suffix(parts[1], layer_names)
    # An op directly in the model's scope (e.g. an op between layers): its own name.
    return layer if layer is not None else f"{model_name}/{parts[1]}"


def backbone_layer_names(description, input_shape):
    """Names of the top-level layers of a model that belong to its backbone.

    The builders make the segmentation model from the backbone's own graph (its layers
    become top-level layers of the model, under the names the backbone gives them), so the
    backbone is rebuilt from the model's description (`models.describe_model`: its recorded
    build arguments, a preset's or workdir's training config) and its layer names are taken.
    A backbone that was given as an object (e.g. a keras-hub backbone, a nested model) is the
    one layer of that name. Returns None when nothing says which model this is.
    """
    from keras_fusionseg import models
    from keras_fusionseg.backbones.registry import build_backbone

    backbone = description.get("backbone")
    if isinstance(backbone, dict):
        return {backbone["name"]}
    if description.get("model") is None:
        return None
    spec = models.get_model_spec(description["model"])
    name = backbone or spec.default_backbone
    # As `models.build` does: the model's default backbone comes with its default options
    # (a training config records only the options it set).
    defaults = spec.default_backbone_options if name == spec.default_backbone else {}
    rebuilt = build_backbone(
        name,
        input_shape=input_shape,
        output_stride=description.get("output_stride") or spec.default_output_stride,
        **{**defaults, **(description.get("backbone_options") or {})},
    )
    return operation_names(rebuilt)


def operation_names(model):
    """Names of a functional model's top-level layers and operations (`keras.ops` calls
    between layers, e.g. an `add`, are operations of the graph but not layers)."""
    return {operation.name for operation in getattr(model, "operations", model.layers)}


def part_of(layer, backbone_layers):
    """ "backbone", "head" (every other layer of the model) or `OUTSIDE`."""
    if layer == OUTSIDE:
        return OUTSIDE
    if backbone_layers is None:
        return "(unknown: no build arguments)"
    return "backbone" if layer in backbone_layers else "head"


def framework_op_rows(xplane_paths):
    """Per-op rows of xprof's `framework_op_stats` tool, and the total op self time.

    Returns:
        (rows, total_us, side): rows are dicts with `type`, `operation`, `occurrences` and
        `self_time_us` of the side that ran the ops ("Device" when the trace has device ops,
        else "Host", as on CPU); IDLE is left out. xprof lists at most 500 ops per table;
        `total_us` is the side's whole op self time, recovered from a row's share, so the
        unlisted rest is `total_us - sum(rows)`.
    """
    import json

    try:
        from xprof.convert import raw_to_tool_data
    except ImportError as error:
        raise ImportError(
            "scripts/profile_model.py reads the trace with xprof: `pip install xprof` (it is in "
            "the `dev` extra)."
        ) from error

    data, _ = raw_to_tool_data.xspace_to_tool_data(
        list(xplane_paths), "framework_op_stats", {"use_saved_result": False}
    )
    if not data:
        raise ValueError(f"xprof found no framework op stats in {list(xplane_paths)}.")
    tables = json.loads(data)
    table = None
    for candidate in tables:  # [with IDLE, without IDLE]
        types = {row["c"][2]["v"] for row in candidate["rows"]}
        if "IDLE" not in types:
            table = candidate
    if table is None or not table["rows"]:
        raise ValueError(f"xprof's framework op stats of {list(xplane_paths)} list no ops.")
    columns = [column["id"] for column in table["cols"]]
    rows = [
        dict(zip(columns, [cell.get("v") for cell in row["c"]], strict=True))
        for row in table["rows"]
    ]
    side = "Device" if any(row["host_or_device"] == "Device" for row in rows) else "Host"
    share_column = f"{side.lower()}_total_self_time_percent"  # a fraction in [0, 1]
    rows = [row for row in rows if row["host_or_device"] == side]
    listed = sum(row["total_self_time"] for row in rows)
    biggest = max(rows, key=lambda row: row["total_self_time"])
    total = listed
    if biggest[share_column] and biggest["total_self_time"]:
        total = max(listed, biggest["total_self_time"] / biggest[share_column])
    out = [
        {
            "type": row["type"],
            "operation": row["operation"],
            "occurrences": int(row["occurrences"]),
            "self_time_us": row["total_self_time"],
        }
        for row in rows
    ]
    return out, total, side


def summarize(rows, total_us, calls, *, model_name, layer_names, backbone_layers):
    """Op time per op type, model part and layer, and the top ops, as percents of `total_us`.

    Args:
        rows: from `framework_op_rows`.
        total_us: all op self time of the trace (the rows' sum plus any unlisted rest).
        calls: number of traced calls (for the per-call times).
        model_name: the model's name (the first name-scope component of its ops).
        layer_names: set of the model's top-level layer names.
        backbone_layers: set of backbone layer names, or None (no backbone/head split).

    Returns:
        dict with `total_op_ms_per_call` and lists `by_op_type`, `by_part`, `by_layer`,
        `top_ops` of {`name`, `ms_per_call`, `percent`} (largest first; `top_ops` entries
        also have `type` and `layer`). Each grouping's percents sum to 100; the time xprof
        did not list op by op is its own `UNLISTED` entry.
    """
    groups = {"by_op_type": {}, "by_part": {}, "by_layer": {}}
    top = []
    for row in rows:
        layer = layer_of(row["operation"], model_name, layer_names)
        keys = {
            "by_op_type": row["type"],
            "by_part": part_of(layer, backbone_layers),
            "by_layer": layer,
        }
        for grouping, key in keys.items():
            groups[grouping][key] = groups[grouping].get(key, 0.0) + row["self_time_us"]
        top.append({"name": row["operation"], "type": row["type"], "layer": layer, **row})
    unlisted = total_us - sum(row["self_time_us"] for row in rows)
    if unlisted > 1e-9 * total_us:
        for grouping in groups.values():
            grouping[UNLISTED] = unlisted

    def entry(name, time_us, **extra):
        return {
            "name": name,
            **extra,
            "ms_per_call": time_us / 1e3 / calls,
            "percent": 100.0 * time_us / total_us,
        }

    summary = {"total_op_ms_per_call": total_us / 1e3 / calls}
    for grouping, times in groups.items():
        ordered = sorted(times.items(), key=lambda item: -item[1])
        summary[grouping] = [entry(name, time_us) for name, time_us in ordered]
    top.sort(key=lambda row: -row["self_time_us"])
    summary["top_ops"] = [
        entry(row["name"], row["self_time_us"], type=row["type"], layer=row["layer"]) for row in top
    ]
    return summary


def format_table(title, entries, limit=None, extra=()):
    """Markdown table of summary entries (name, ms per call, percent, cumulative percent)."""
    shown = entries if limit is None else entries[:limit]
    header = ["name", *extra, "ms/call", "%", "cum. %"]
    lines = [f"{title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cumulative = 0.0
    for item in shown:
        cumulative += item["percent"]
        cells = [item["name"], *(str(item[key]) for key in extra)]
        cells += [f"{item['ms_per_call']:.2f}", f"{item['percent']:.1f}", f"{cumulative:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if len(entries) > len(shown):
        rest = sum(item["percent"] for item in entries[len(shown) :])
        lines.append(f"| ({len(entries) - len(shown)} more) |{' |' * len(extra)} | {rest:.1f} | |")
    return "\n".join(lines)


def load_model(height, width):
    """(model, its `models.describe_model` description) from the flags: a registered model,
    a checkpoint or a preset."""
    from keras_fusionseg import models
    from keras_fusionseg.utils.cli_options import build_from_flags

    if FLAGS.checkpoint or FLAGS.preset:
        given = [name for name in MODEL_FLAGS if FLAGS[name].present]
        if given:
            raise app.UsageError(
                f"--{', --'.join(given)} build a registered model; a --checkpoint or --preset "
                "comes with its own."
            )
        from keras_fusionseg.models.presets import load_checkpoint_or_preset

        model, metadata = load_checkpoint_or_preset(
            checkpoint=FLAGS.checkpoint, preset=FLAGS.preset
        )
        return model, models.describe_model(model, path=FLAGS.checkpoint, metadata=metadata)
    model = build_from_flags(FLAGS, height, width)
    return model, models.describe_model(model)


def describe(description):
    """One line: "deeplabv3plus on resnet50, OS16" (from a checkpoint or preset: its source)."""
    backbone = description.get("backbone")
    if isinstance(backbone, dict):
        backbone = backbone["name"]
    text = f"{description.get('model')} on {backbone}, OS{description.get('output_stride')}"
    if FLAGS.checkpoint or FLAGS.preset:
        source = f"checkpoint {FLAGS.checkpoint}" if FLAGS.checkpoint else f"preset {FLAGS.preset}"
        text = f"{source}: {text}"
    return text


def capture(function, image, logdir, calls):
    """Traces `calls` calls of `function(image)` into `logdir`.

    Returns:
        (paths of the new `.xplane.pb` files, wall seconds of each call under the profiler).
    """
    import glob
    import time

    import tensorflow as tf

    pattern = os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")
    before = set(glob.glob(pattern))
    options = tf.profiler.experimental.ProfilerOptions(
        host_tracer_level=2, python_tracer_level=0, device_tracer_level=1
    )
    seconds = []
    tf.profiler.experimental.start(logdir, options=options)
    try:
        for step in range(calls):
            with tf.profiler.experimental.Trace("inference", step_num=step, _r=1):
                start = time.perf_counter()
                tf.nest.map_structure(lambda t: t.numpy(), function(image))
                seconds.append(time.perf_counter() - start)
    finally:
        tf.profiler.experimental.stop()
    paths = sorted(set(glob.glob(pattern)) - before)
    if not paths:
        raise RuntimeError(f"The profiler wrote no .xplane.pb under {logdir}.")
    return paths, seconds


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.calls < 1 or FLAGS.batch < 1 or FLAGS.warmup < 0:
        raise app.UsageError("--calls and --batch must be >= 1 and --warmup >= 0.")
    import statistics
    import tempfile

    import tensorflow as tf

    from keras_fusionseg.utils.cli_options import parse_input_size
    from keras_fusionseg.utils.precision import onednn_setting

    height, width = parse_input_size(FLAGS.size)
    model, model_description = load_model(height, width)
    description = describe(model_description)
    if FLAGS.fold_batch_norm:
        from keras_fusionseg.export.optimize import fold_batch_norm

        model = fold_batch_norm(model)
        description += ", BN folded"
    function = tf.function(lambda x: model(x, training=False), autograph=False)
    image = tf.random.uniform((FLAGS.batch, height, width, 3), 0, 255, seed=0)
    for _ in range(FLAGS.warmup):
        tf.nest.map_structure(lambda t: t.numpy(), function(image))
    logdir = FLAGS.logdir or tempfile.mkdtemp(prefix="profile_model_")
    paths, seconds = capture(function, image, logdir, FLAGS.calls)

    rows, total_us, side = framework_op_rows(paths)
    summary = summarize(
        rows,
        total_us,
        FLAGS.calls,
        model_name=model.name,
        layer_names=operation_names(model),
        backbone_layers=backbone_layer_names(model_description, (height, width, 3)),
    )
    onednn = onednn_setting()
    summary["settings"] = {
        "model": description,
        "size": [height, width],
        "batch": FLAGS.batch,
        "warmup": FLAGS.warmup,
        "calls": FLAGS.calls,
        "fold_batch_norm": FLAGS.fold_batch_norm,
        "side": side,
        "tensorflow": tf.__version__,
        "onednn": onednn,
        "cpu_count": os.cpu_count(),
        "xplane": paths,
    }
    summary["wall_ms_per_call_median"] = 1e3 * statistics.median(seconds)
    summary["wall_ms_per_call"] = [1e3 * s for s in seconds]

    print(
        f"{description}, {height}x{width}, batch {FLAGS.batch}: {FLAGS.calls} calls traced after "
        f"{FLAGS.warmup} warm-up; TF {tf.__version__}, oneDNN in effect: "
        f"{onednn['effective']}, {os.cpu_count()} CPU(s)."
    )
    print(
        f"Median wall time per call (under the profiler): "
        f"{summary['wall_ms_per_call_median']:.1f} ms; {side.lower()} op self time per call: "
        f"{summary['total_op_ms_per_call']:.1f} ms (ops on parallel threads each count)."
    )
    print(f"Trace: {paths[0]}\n")
    print(format_table("Op time per op type", summary["by_op_type"]) + "\n")
    print(format_table("Op time per model part", summary["by_part"]) + "\n")
    print(format_table("Op time per Keras layer", summary["by_layer"], FLAGS.top) + "\n")
    print(format_table("Top ops", summary["top_ops"], FLAGS.top, extra=("type",)))
    if FLAGS.json_out:
        import json

        with open(FLAGS.json_out, "w") as f:
            json.dump(summary, f, indent=2)
        print(f"\nwrote {FLAGS.json_out}")


if __name__ == "__main__":
    app.run(main)
