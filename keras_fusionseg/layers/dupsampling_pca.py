"""Fitting the DUpsampling matrices: PCA of r x r one-hot label patches (streaming).

Tian et al., "Decoders Matter for Semantic Segmentation", CVPR 2019, Sec. 3.1, eqs. 2-3:
each r x r window of the one-hot label map is a vector v in {0, 1}^N, N = r*r*num_classes,
ordered [row offset][column offset][class] (the `depth_to_space` order, see `dupsampling`).
With the vectors centred by their training-set mean, the P and W minimising
sum ||v - W P v||^2 under an orthogonality constraint are the top principal components:
W (N x C~) has them as columns and P = W^T.

Streaming: labels are read one record at a time and only N-sized (exact method: N x N)
statistics are kept, so the training set never has to fit in memory. Two methods:

- `"exact"`: one pass accumulating sum(v) and sum(v v^T); eigen-decomposition of the
  covariance. Memory N^2 and N^2 work per distinct patch, so for small N (tests, small r, few classes).
- `"randomized"`: randomized subspace iteration on the covariance (Halko, Martinsson, Tropp,
  SIAM Review 2011, Alg. 4.4): memory N x (C~ + oversampling), 2 + `power_iterations`
  passes over the data, each pass one pair of dense matmuls per image. Used when N is large
  (CamVid at r = 32: N = 11264, an N x N float64 covariance would take 1 GB and ~8 TFLOP).

Ignore pixels (label `ignore_label`, 255 by default) and the bottom/right padding that
makes H and W multiples of r (paper Sec. 3.1: "a padding is applied") are handled by
`ignore_mode`:

- `"zero"` (default): such a pixel contributes an all-zero one-hot vector (no class) and the
  patch is kept; the basis then also spends some capacity on "no class" regions, which are
  never scored.
- `"skip_patch"`: every patch containing an ignore or padding pixel is left out of the fit.
  On data whose void pixels sit on object boundaries (CamVid) this drops many of the
  boundary patches the basis most needs, so it is not the default.
"""

import dataclasses
import os

import numpy as np

from keras_fusionseg.layers.common import check_positive_int

IGNORE_MODES = ("zero", "skip_patch")
METHODS = ("auto", "exact", "randomized")
# Above this N, `method="auto"` uses the randomized method (exact: N^2 float64 memory).
EXACT_MAX_DIM = 1024


@dataclasses.dataclass
class DUpsamplingBasis:
    """A fitted DUpsampling basis (paper eq. 2): x = P (v - mean), v~ = W x + mean.

    Attributes:
        reconstruction: W, float32 array (N, C~), orthonormal columns.
        projection: P = W^T, float32 array (C~, N).
        mean: float32 array (N,), mean label-patch vector over the training set.
        ratio: int r.
        num_classes: int.
        explained_variance: float64 array (C~,), the eigenvalues of the kept components.
        total_variance: float, trace of the patch covariance.
        num_patches: int, patches used in the fit.
    """

    reconstruction: np.ndarray
    projection: np.ndarray
    mean: np.ndarray
    ratio: int
    num_classes: int
    explained_variance: np.ndarray
    total_variance: float
    num_patches: int

    @property
    def code_channels(self):
        return self.reconstruction.shape[1]

    def encode(self, patches):
        """Codes x (..., C~) of patch vectors v (..., N)."""
        return (np.asarray(patches, np.float32) - self.mean) @ self.projection.T

    def decode(self, codes):
        """Reconstructions v~ (..., N) of codes x (..., C~)."""
        return np.asarray(codes, np.float32) @ self.reconstruction.T + self.mean

    def save(self, path):
        """Writes a `.npz` file (loaded by `load_dupsampling_basis` and the `dunet` builder)."""
        np.savez(
            path,
            reconstruction=self.reconstruction,
            projection=self.projection,
            mean=self.mean,
            ratio=self.ratio,
            num_classes=self.num_classes,
            explained_variance=self.explained_variance,
            total_variance=self.total_variance,
            num_patches=self.num_patches,
        )


def load_dupsampling_basis(path):
    """Reads a basis written by `DUpsamplingBasis.save`, with an error naming the file."""
    path = os.fspath(path)
    try:
        with np.load(path) as data:
            return DUpsamplingBasis(
                reconstruction=data["reconstruction"].astype(np.float32),
                projection=data["projection"].astype(np.float32),
                mean=data["mean"].astype(np.float32),
                ratio=int(data["ratio"]),
                num_classes=int(data["num_classes"]),
                explained_variance=data["explained_variance"],
                total_variance=float(data["total_variance"]),
                num_patches=int(data["num_patches"]),
            )
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(f"{path!r} is not a DUpsampling basis file: {error}") from error


def _label_windows(label, ratio, num_classes, ignore_label, ignore_mode, record):
    """Integer windows (num_patches, r*r) of one label map, void and padding as `ignore_label`."""
    label = np.asarray(label)
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    where = f" in record {record!r}" if record is not None else ""
    if label.ndim != 2:
        raise ValueError(f"A label must be (H, W) or (H, W, 1){where}, received {label.shape}.")
    label = label.astype(np.int64)
    bad = (label != ignore_label) & ((label < 0) | (label >= num_classes))
    if bad.any():
        raise ValueError(
            f"Label ids must be in [0, {num_classes}) or {ignore_label}{where}; "
            f"found {sorted(np.unique(label[bad]).tolist())[:10]}."
        )
    h, w = label.shape
    label = np.pad(label, ((0, -h % ratio), (0, -w % ratio)), constant_values=ignore_label)
    hp, wp = label.shape
    windows = label.reshape(hp // ratio, ratio, wp // ratio, ratio).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, ratio * ratio)
    if ignore_mode == "skip_patch":
        windows = windows[(windows != ignore_label).all(axis=1)]
    return windows


def _one_hot_windows(windows, num_classes):
    """(P, r*r) class ids -> (P, r*r*num_classes) one-hot rows; void ids give zero vectors."""
    count, pixels = windows.shape
    onehot = np.zeros((count, pixels * num_classes), np.float32)
    rows, cols = np.nonzero((windows >= 0) & (windows < num_classes))
    onehot[rows, cols * num_classes + windows[rows, cols]] = 1.0
    return onehot


def label_patches(label, ratio, num_classes, ignore_label=255, ignore_mode="zero", record=None):
    """One-hot r x r patch vectors of one label map (bottom/right padded to multiples of r).

    Args:
        label: integer array (H, W) or (H, W, 1) of class ids.
        ratio: int r.
        num_classes: int.
        ignore_label: int, the void id.
        ignore_mode: `"zero"` or `"skip_patch"` (see the module docstring).
        record: optional name of the record, used in error messages.

    Returns:
        float32 array (num_patches, r*r*num_classes), ordered [row][column][class].
    """
    windows = _label_windows(label, ratio, num_classes, ignore_label, ignore_mode, record)
    return _one_hot_windows(windows, num_classes)


def _iterate_labels(dataset, label_key):
    """Yields (label array, record index) from arrays, dicts or (image, label) tuples."""
    import tensorflow as tf

    source = dataset.as_numpy_iterator() if isinstance(dataset, tf.data.Dataset) else dataset
    for index, item in enumerate(source):
        if isinstance(item, dict):
            if label_key not in item:
                raise ValueError(
                    f"Record {index} has no {label_key!r} key (keys: {sorted(item)}); "
                    "set `label_key`."
                )
            item = item[label_key]
        elif isinstance(item, tuple | list):
            item = item[-1]
        item = np.asarray(item)
        if item.ndim == 4:  # a batch
            for j, one in enumerate(item):
                yield one, f"{index}[{j}]"
        else:
            yield item, index


class _PatchStream:
    """Re-iterable stream of patch matrices, one per label map."""

    def __init__(self, dataset, ratio, num_classes, ignore_label, ignore_mode, label_key):
        if iter(dataset) is dataset:
            raise ValueError(
                "`dataset` must be re-iterable (a tf.data.Dataset, list or other sequence), "
                "received a one-shot iterator; fitting reads the data more than once."
            )
        self.args = (dataset, ratio, num_classes, ignore_label, ignore_mode, label_key)

    def __iter__(self):
        dataset, ratio, num_classes, ignore_label, ignore_mode, label_key = self.args
        for label, record in _iterate_labels(dataset, label_key):
            windows = _label_windows(label, ratio, num_classes, ignore_label, ignore_mode, record)
            if len(windows):
                # Identical windows (uniform sky, road...) are common: count them once.
                windows, counts = np.unique(windows, axis=0, return_counts=True)
                yield _one_hot_windows(windows, num_classes), counts.astype(np.float32)


def _fit_exact(stream, n):
    total = np.zeros(n)
    second = np.zeros((n, n))
    count = 0
    for v, counts in stream:
        total += counts @ v
        second += v.T @ (counts[:, None] * v)
        count += int(counts.sum())
    if count == 0:
        raise ValueError("`dataset` yielded no label patches to fit.")
    mean = total / count
    covariance = second / count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    return mean, eigenvalues[order], eigenvectors[:, order], float(np.trace(covariance)), count


def _covariance_times(stream, basis):
    """One pass: (mean, C @ basis, trace C, count) with C the centred patch covariance."""
    n = basis.shape[0]
    total = np.zeros(n)
    product = np.zeros(basis.shape)
    sum_sq = 0.0
    count = 0
    basis32 = basis.astype(np.float32)
    for v, counts in stream:
        total += counts @ v
        product += v.T @ (counts[:, None] * (v @ basis32))
        sum_sq += float(counts @ v.sum(axis=1))  # one-hot entries: v.v = sum(v)
        count += int(counts.sum())
    if count == 0:
        raise ValueError("`dataset` yielded no label patches to fit.")
    mean = total / count
    product = product / count - np.outer(mean, mean @ basis)
    trace = sum_sq / count - float(mean @ mean)
    return mean, product, trace, count


def _fit_randomized(stream, n, channels, oversampling, power_iterations, seed):
    k = min(n, channels + oversampling)
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    for _ in range(1 + power_iterations):
        _, y, _, _ = _covariance_times(stream, q)
        q, _ = np.linalg.qr(y)
    mean, cq, trace, count = _covariance_times(stream, q)
    small = q.T @ cq
    eigenvalues, eigenvectors = np.linalg.eigh((small + small.T) / 2)
    order = np.argsort(eigenvalues)[::-1]
    return mean, eigenvalues[order], q @ eigenvectors[:, order], trace, count


def fit_dupsampling(
    dataset,
    num_classes,
    ratio,
    channels,
    *,
    ignore_label=255,
    ignore_mode="zero",
    label_key="label",
    method="auto",
    oversampling=16,
    power_iterations=2,
    seed=0,
):
    """PCA of r x r one-hot label patches: the W, P and mean of DUpsampling (paper Sec. 3.1).

    Args:
        dataset: re-iterable source of labels: a `tf.data.Dataset` or a sequence whose
            elements are label arrays (H, W[, 1]) (or batches (B, H, W, 1)), dicts with
            `label_key`, or (image, label) tuples.
        num_classes: int, classes (ids 0..num_classes-1).
        ratio: int r, the patch size (the output stride DUpsampling undoes).
        channels: int C~ <= N = r*r*num_classes, components kept.
        ignore_label: int, void id.
        ignore_mode: `"zero"` or `"skip_patch"` (see module docstring).
        label_key: str, label key of dict records.
        method: `"auto"` (exact when N <= 1024 else randomized), `"exact"` or `"randomized"`.
        oversampling: int, extra random directions of the randomized method.
        power_iterations: int >= 0, extra passes of the randomized method.
        seed: int, seed of the randomized method.

    Returns:
        A `DUpsamplingBasis` (W, P = W^T, mean, ...).
    """
    for name, value in (("num_classes", num_classes), ("ratio", ratio), ("channels", channels)):
        check_positive_int(name, value)
    n = ratio * ratio * num_classes
    if channels > n:
        raise ValueError(
            f"`channels` must be at most ratio*ratio*num_classes = {n}, received {channels}."
        )
    if ignore_mode not in IGNORE_MODES:
        raise ValueError(f"`ignore_mode` must be one of {IGNORE_MODES}, received {ignore_mode!r}.")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, received {method!r}.")
    if not isinstance(power_iterations, int) or power_iterations < 0:
        raise ValueError(
            f"`power_iterations` must be a non-negative integer, received {power_iterations!r}."
        )
    stream = _PatchStream(dataset, ratio, num_classes, ignore_label, ignore_mode, label_key)
    if method == "auto":
        method = "exact" if n <= EXACT_MAX_DIM or channels + oversampling >= n else "randomized"
    if method == "exact":
        mean, eigenvalues, eigenvectors, trace, count = _fit_exact(stream, n)
    else:
        mean, eigenvalues, eigenvectors, trace, count = _fit_randomized(
            stream, n, channels, oversampling, power_iterations, seed
        )
    w = eigenvectors[:, :channels].astype(np.float32)
    return DUpsamplingBasis(
        reconstruction=w,
        projection=np.ascontiguousarray(w.T),
        mean=mean.astype(np.float32),
        ratio=ratio,
        num_classes=num_classes,
        explained_variance=np.maximum(eigenvalues[:channels], 0.0),
        total_variance=trace,
        num_patches=count,
    )


def reconstruct_labels(label, basis, ignore_label=255):
    """Labels (H, W) after compressing every r x r patch to C~ numbers and back (argmax).

    The DUpsampling upper bound of paper Table 1 for one label map: patches are one-hot
    encoded with ignore pixels as zero vectors, projected with P, reconstructed with W and
    the mean, and each pixel takes the class of its largest reconstructed score.
    """
    label = np.asarray(label)
    if label.ndim == 3:
        label = label[..., 0]
    h, w = label.shape
    r, c = basis.ratio, basis.num_classes
    v = label_patches(label, r, c, ignore_label, "zero")
    scores = basis.decode(basis.encode(v))
    hp, wp = h + (-h % r), w + (-w % r)
    scores = scores.reshape(hp // r, wp // r, r, r, c).transpose(0, 2, 1, 3, 4)
    return scores.reshape(hp, wp, c)[:h, :w].argmax(axis=-1)
