"""How close a compressed model's output is to the original's, in numpy alone.

The accuracy guard scores every compressed target with these against the original model's output
on held-out images: :func:`pearson` and :func:`max_abs_error` for any image output, :func:`ssim`
for restoration, :func:`dice`/:func:`iou` for semantic masks and :func:`average_precision` for
instance segmentation (cellpose, StarDist); :func:`class_dice` scores each class of label
images as MONAI's ``DiceMetric`` does. None needs scipy or scikit-image; :func:`ssim`
reproduces ``skimage.metrics.structural_similarity`` with its default settings.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ebai.core.errors import InputError

__all__ = ["average_precision", "class_dice", "dice", "iou", "max_abs_error", "pearson", "ssim"]


def _pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        msg = f"{what} needs arrays of one shape, got {tuple(a.shape)} and {tuple(b.shape)}: compare outputs of the same image"
        raise InputError(msg)
    if a.size == 0:
        msg = f"{what} needs non-empty arrays, got shape {tuple(a.shape)}"
        raise InputError(msg)
    return a, b


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two arrays of one shape, over all their elements.

    Insensitive to a global scale and offset, which is why it is the default fidelity score of a
    compressed model. Computed in float64. When an array is constant the correlation is undefined;
    this returns 1.0 if both arrays are equal and 0.0 otherwise, so a guard never sees NaN.

    Parameters
    ----------
    a, b
        Arrays of the same shape (any dtype).

    Returns
    -------
    float
        The correlation in ``[-1, 1]``.
    """
    a, b = _pair(a, b, "pearson")
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    sxx, syy = float(x @ x), float(y @ y)
    if sxx == 0.0 or syy == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.clip((x @ y) / np.sqrt(sxx * syy), -1.0, 1.0))


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference between two arrays of one shape, in float64."""
    a, b = _pair(a, b, "max_abs_error")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _box_mean(x: np.ndarray, win: int) -> np.ndarray:
    """Mean over every ``win``-wide window along all axes, valid positions only."""
    for axis in range(x.ndim):
        x = sliding_window_view(x, win, axis=axis).sum(axis=-1)
    return x / float(win**x.ndim)


def ssim(
    a: np.ndarray,
    b: np.ndarray,
    data_range: float | None = None,
    *,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity of two images (2D, 3D or more), as scikit-image computes it.

    Same definition and defaults as ``skimage.metrics.structural_similarity`` (uniform window of
    7 per axis, ``K1=0.01``, ``K2=0.03``, sample covariance, the mean taken over pixels at least
    half a window away from the border), so results agree to rounding. Axes of length 1 (a channel
    axis of 1, a single slice) are dropped first; all remaining axes count as spatial.

    Parameters
    ----------
    a, b
        Images of the same shape; every axis longer than 1 must be at least ``win_size`` long.
    data_range
        Dynamic range of the images (max minus min possible value). ``None``: the dtype's range for
        integer images, else the joint range of both images (``max(a, b) - min(a, b)``); pass it
        explicitly to compare scores across images.
    win_size
        Odd window width.
    k1, k2
        Stabilising constants of the SSIM formula.

    Returns
    -------
    float
        SSIM, 1.0 for identical images.
    """
    a, b = _pair(a, b, "ssim")
    if win_size < 3 or win_size % 2 == 0:
        msg = f"ssim window size must be odd and at least 3, got {win_size}"
        raise InputError(msg)
    if data_range is None:
        if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
            info = np.iinfo(a.dtype)
            data_range = float(info.max) - float(info.min)
        else:
            data_range = float(max(a.max(), b.max())) - float(min(a.min(), b.min()))
    if not data_range > 0:
        msg = f"ssim needs a positive data range, got {data_range}: pass data_range= (e.g. 1.0 for images in [0, 1])"
        raise InputError(msg)
    keep = tuple(s for s in a.shape if s > 1)
    x = a.astype(np.float64).reshape(keep)
    y = b.astype(np.float64).reshape(keep)
    if x.ndim == 0 or any(s < win_size for s in keep):
        msg = f"ssim needs every axis of at least {win_size} pixels, got shape {tuple(a.shape)}: use a smaller win_size or larger images"
        raise InputError(msg)

    n = win_size**x.ndim
    cov_norm = n / (n - 1.0)
    ux, uy = _box_mean(x, win_size), _box_mean(y, win_size)
    uxx, uyy, uxy = _box_mean(x * x, win_size), _box_mean(y * y, win_size), _box_mean(x * y, win_size)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def _binary_pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _pair(a, b, what)
    return a.astype(bool), b.astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B| / (|A| + |B|)`` of two masks (non-zero is foreground).

    Returns 1.0 when both masks are empty: they agree.
    """
    x, y = _binary_pair(a, b, "dice")
    total = int(x.sum()) + int(y.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(x, y).sum()) / total


def class_dice(pred_labels: np.ndarray, true_labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Dice of each foreground class ``1 .. num_classes - 1`` of two label images.

    Equals MONAI's ``DiceMetric(include_background=False, reduction="none", ignore_empty=False)``
    on the one-hot label images: a class in one image only scores 0.0 and a class in neither
    scores 1.0 (they agree). So a prediction that swaps every class scores 0.0, and one that finds
    a class the target lacks is penalised rather than skipped.

    Parameters
    ----------
    pred_labels, true_labels
        Integer (or boolean) label images of one shape; 0 is background.
    num_classes
        Number of classes, background included; default one more than the largest label in
        either image, and at least 2.

    Returns
    -------
    numpy.ndarray
        float64 Dice per foreground class, class 1 first.
    """
    a, b = _pair(pred_labels, true_labels, "class_dice")
    if a.dtype.kind not in "biu" or b.dtype.kind not in "biu":
        msg = f"class_dice needs integer label images, got {a.dtype} and {b.dtype}: turn scores into labels first (argmax or a threshold)"
        raise InputError(msg)
    a, b = a.astype(np.int64), b.astype(np.int64)
    low, high = min(int(a.min()), int(b.min())), max(int(a.max()), int(b.max()))
    classes = max(2, high + 1) if num_classes is None else int(num_classes)
    if low < 0 or high >= classes:
        msg = f"labels span {low}..{high} but there are {classes} classes: give labels 0..{classes - 1} or the right num_classes"
        raise InputError(msg)
    both = np.bincount(a[a == b], minlength=classes)[1:classes]
    total = np.bincount(a.ravel(), minlength=classes)[1:classes] + np.bincount(b.ravel(), minlength=classes)[1:classes]
    return np.where(total > 0, 2.0 * both / np.maximum(total, 1), 1.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union ``|A∩B| / |A∪B|`` of two masks (non-zero is foreground).

    Returns 1.0 when both masks are empty: they agree.
    """
    x, y = _binary_pair(a, b, "iou")
    union = int(np.logical_or(x, y).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(x, y).sum()) / union


def _instance_index(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Per pixel, the object's rank among the image's non-zero labels (-1 for background)."""
    ids, inverse = np.unique(labels.ravel(), return_inverse=True)
    foreground = ids != 0
    rank = np.cumsum(foreground) - 1
    rank[~foreground] = -1
    return rank[inverse.ravel()], int(foreground.sum())


def _instance_ious(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse IoU of every overlapping (true, pred) instance pair.

    Returns the instance counts and, for each overlapping pair, the true index, pred index and IoU
    (indices count instances from 0, background excluded).
    """
    t_idx, n_true = _instance_index(true)
    p_idx, n_pred = _instance_index(pred)
    t_area = np.bincount(t_idx[t_idx >= 0], minlength=n_true)
    p_area = np.bincount(p_idx[p_idx >= 0], minlength=n_pred)
    both = (t_idx >= 0) & (p_idx >= 0)
    codes, overlap = np.unique(t_idx[both].astype(np.int64) * max(n_pred, 1) + p_idx[both], return_counts=True)
    ti, pi = codes // max(n_pred, 1), codes % max(n_pred, 1)
    union = t_area[ti] + p_area[pi] - overlap
    return n_true, n_pred, ti, pi, overlap / union


def _max_matching(edges_t: np.ndarray, edges_p: np.ndarray, n_true: int) -> int:
    """Size of a maximum matching of a bipartite graph (augmenting paths, Kuhn's algorithm)."""
    adjacency: list[list[int]] = [[] for _ in range(n_true)]
    for t, p in zip(edges_t.tolist(), edges_p.tolist(), strict=True):
        adjacency[t].append(p)
    match_of_pred: dict[int, int] = {}
    size = 0
    for root in range(n_true):
        if not adjacency[root]:
            continue
        # iterative depth-first search for an augmenting path from ``root``
        seen: set[int] = set()
        parent: dict[int, tuple[int, int]] = {}  # pred -> (true it was reached from, previous pred)
        stack = [(root, iter(adjacency[root]), -1)]
        found = -1
        while stack and found < 0:
            t, it, via = stack[-1]
            advanced = False
            for p in it:
                if p in seen:
                    continue
                seen.add(p)
                parent[p] = (t, via)
                if p not in match_of_pred:
                    found = p
                else:
                    nxt = match_of_pred[p]
                    stack.append((nxt, iter(adjacency[nxt]), p))
                advanced = True
                break
            if not advanced:
                stack.pop()
        if found >= 0:
            p = found
            while p != -1:
                t, prev = parent[p]
                match_of_pred[p] = t
                p = prev
            size += 1
    return size


def average_precision(pred_labels: np.ndarray, true_labels: np.ndarray, threshold: float = 0.5) -> float:
    """Average precision of instance masks at one IoU threshold, as cellpose and StarDist report it.

    ``AP = TP / (TP + FP + FN)``: a predicted object is a true positive when it is matched one-to-one
    to a true object with IoU at least ``threshold``; unmatched predictions are false positives and
    unmatched true objects false negatives. The matching maximises the number of true positives,
    as the Hungarian matching of cellpose and StarDist does.

    Parameters
    ----------
    pred_labels, true_labels
        Integer label images of one shape (2D or 3D); 0 is background, each other value one object.
    threshold
        IoU needed for a match, in ``(0, 1]``.

    Returns
    -------
    float
        AP in ``[0, 1]``; 1.0 when both images hold no object.

    Notes
    -----
    For ``threshold >= 0.5`` no object can reach that IoU with two disjoint objects of the other
    image except in the tie where it holds exactly two halves: IoU >= 0.5 means the pair's
    intersection is at least half their union, so the partner covers at least half of the object,
    and two disjoint partners can only both do so with equality. The candidate pairs therefore form
    disjoint stars, any maximal matching is a maximum one, and a greedy pass (best IoU first) is
    exact without scipy's Hungarian solver. Below 0.5 an exact maximum-cardinality matching by
    augmenting paths is used.
    """
    pred = np.asarray(pred_labels)
    true = np.asarray(true_labels)
    pred, true = _pair(pred, true, "average_precision")
    if not (np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool) or not (
        np.issubdtype(true.dtype, np.integer) or true.dtype == bool
    ):
        msg = f"average_precision needs integer label images, got {pred.dtype} and {true.dtype}: label the masks first"
        raise InputError(msg)
    if not 0.0 < threshold <= 1.0:
        msg = f"IoU threshold must be in (0, 1], got {threshold}"
        raise InputError(msg)
    n_true, n_pred, ti, pi, ious = _instance_ious(pred.astype(np.int64), true.astype(np.int64))
    if n_true == 0 and n_pred == 0:
        return 1.0
    ok = ious >= threshold
    ti, pi, ious = ti[ok], pi[ok], ious[ok]
    if threshold >= 0.5:
        order = np.argsort(-ious, kind="stable")
        used_t: set[int] = set()
        used_p: set[int] = set()
        for t, p in zip(ti[order].tolist(), pi[order].tolist(), strict=True):
            if t not in used_t and p not in used_p:
                used_t.add(t)
                used_p.add(p)
        tp = len(used_t)
    else:
        tp = _max_matching(ti, pi, n_true)
    fp = n_pred - tp
    fn = n_true - tp
    return tp / (tp + fp + fn)
