"""Metrics against hand-computed cases, and SSIM against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest

from ebai.core.errors import InputError
from ebai.core.metrics import average_precision, class_dice, dice, iou, max_abs_error, pearson, ssim


def test_pearson_hand_cases() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    # deviations (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): 4 / sqrt(5 * 5)
    assert pearson(a, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert pearson(a, 3 * a + 7) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a.reshape(2, 2), (2 * a).reshape(2, 2)) == pytest.approx(1.0)


def test_pearson_constant_arrays() -> None:
    c = np.full((3, 3), 2.0)
    assert pearson(c, c) == 1.0
    assert pearson(c, c + 1) == 0.0
    assert pearson(c, np.arange(9.0).reshape(3, 3)) == 0.0


def test_max_abs_error() -> None:
    assert max_abs_error(np.array([1, 2, 3]), np.array([1, 5, 2])) == 3.0
    assert max_abs_error(np.array([0.5], dtype=np.float32), np.array([0.25], dtype=np.float32)) == 0.25
    assert max_abs_error(np.array([0], dtype=np.uint8), np.array([255], dtype=np.uint8)) == 255.0  # no wrap-around


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(InputError, match="one shape"):
        pearson(np.zeros(3), np.zeros(4))
    with pytest.raises(InputError, match="non-empty"):
        max_abs_error(np.zeros(0), np.zeros(0))


def test_ssim_hand_case() -> None:
    # constant images: means 0.5 and 0.25, no variance, so SSIM = (2*0.5*0.25 + C1) / (0.5^2 + 0.25^2 + C1)
    c1 = (0.01 * 1.0) ** 2
    a = np.full((9, 9), 0.5)
    b = np.full((9, 9), 0.25)
    assert ssim(a, b, data_range=1.0) == pytest.approx((0.25 + c1) / (0.3125 + c1), rel=1e-12)
    assert ssim(a, a, data_range=1.0) == pytest.approx(1.0)


def test_ssim_errors() -> None:
    with pytest.raises(InputError, match="at least 7"):
        ssim(np.zeros((5, 20)), np.zeros((5, 20)), data_range=1.0)
    with pytest.raises(InputError, match="positive data range"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_ssim_drops_singleton_axes(rng: np.random.Generator) -> None:
    a = rng.random((1, 20, 20))
    b = a + 0.1 * rng.random((1, 20, 20))
    assert ssim(a, b, data_range=1.0) == pytest.approx(ssim(a[0], b[0], data_range=1.0))


@pytest.mark.parametrize("shape", [(40, 53), (12, 21, 17)])
def test_ssim_matches_skimage(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed (a dev-only reference)")
    a = rng.random(shape)
    b = np.clip(a + 0.2 * rng.normal(size=shape), 0, 1)
    for data_range in (1.0, 2.5):
        ours = ssim(a, b, data_range=data_range)
        theirs = metrics.structural_similarity(a, b, data_range=data_range)
        assert abs(ours - theirs) < 1e-6
    ints_a = (a * 255).astype(np.uint8)
    ints_b = (b * 255).astype(np.uint8)
    # integer images: data_range inferred from the dtype, as scikit-image does
    assert abs(ssim(ints_a, ints_b) - metrics.structural_similarity(ints_a, ints_b)) < 1e-6


def test_dice_and_iou_hand_cases() -> None:
    a = np.array([1, 1, 0, 0])
    b = np.array([1, 0, 1, 0])
    assert dice(a, b) == pytest.approx(0.5)  # 2 * 1 / (2 + 2)
    assert iou(a, b) == pytest.approx(1 / 3)  # 1 / 3
    labels = np.array([[0, 3], [7, 7]])  # any non-zero value is foreground
    assert dice(labels, labels > 0) == 1.0
    empty = np.zeros((4, 4), dtype=bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, ~empty) == 0.0 and iou(empty, ~empty) == 0.0


def test_average_precision_hand_case() -> None:
    true = np.zeros((10, 10), dtype=np.int32)
    true[:5, :5] = 1  # 25 pixels
    true[5:, 5:] = 2  # 25 pixels
    pred = np.zeros((10, 10), dtype=np.int32)
    pred[:5, :4] = 3  # inside object 1: IoU 20/25 = 0.8
    pred[6:, 6:] = 7  # inside object 2: IoU 16/25 = 0.64
    pred[0, 9] = 9  # a false positive
    # TP 2, FP 1, FN 0
    assert average_precision(pred, true) == pytest.approx(2 / 3)
    # at 0.7 only object 1 matches: TP 1, FP 2, FN 1
    assert average_precision(pred, true, threshold=0.7) == pytest.approx(1 / 4)
    assert average_precision(true, true) == 1.0
    assert average_precision(true * 5, true) == 1.0  # label values do not matter


def test_average_precision_tie_at_half() -> None:
    # one true object of 4 pixels, two predicted halves: both have IoU exactly 0.5, one can match
    true = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 2, 2]])
    assert average_precision(pred, true, threshold=0.5) == pytest.approx(1 / 2)  # TP 1, FP 1, FN 0


def test_average_precision_is_optimal_below_half() -> None:
    # t1 = [0, 100), t2 = [100, 200), p1 = [40, 140), p2 = [0, 40)
    # IoU(t1, p1) = 60/140 = 0.43, IoU(t2, p1) = 40/160 = 0.25, IoU(t1, p2) = 40/100 = 0.4
    # best-first greedy would pair t1-p1 and stop at TP 1; the optimum is t1-p2 and t2-p1
    true = np.zeros((1, 200), dtype=np.int64)
    true[0, :100], true[0, 100:] = 1, 2
    pred = np.zeros((1, 200), dtype=np.int64)
    pred[0, 40:140], pred[0, :40] = 1, 2
    assert average_precision(pred, true, threshold=0.2) == pytest.approx(1.0)
    assert average_precision(pred, true, threshold=0.42) == pytest.approx(1 / 3)  # only t1-p1: TP 1, FP 1, FN 1
    assert average_precision(pred, true, threshold=0.5) == 0.0


def test_average_precision_empty_and_errors() -> None:
    empty = np.zeros((5, 5), dtype=np.uint16)
    one = empty.copy()
    one[1:3, 1:3] = 4
    assert average_precision(empty, empty) == 1.0
    assert average_precision(one, empty) == 0.0
    assert average_precision(empty, one) == 0.0
    with pytest.raises(InputError, match="integer label images"):
        average_precision(one.astype(float), one)
    with pytest.raises(InputError, match="threshold"):
        average_precision(one, one, threshold=0.0)


def test_average_precision_matches_brute_force(rng: np.random.Generator) -> None:
    # random blobby label images; compare with an exhaustive maximum matching on small counts
    from itertools import permutations

    for _ in range(20):
        true = rng.integers(0, 4, size=(6, 6))
        pred = rng.integers(0, 4, size=(6, 6))
        for th in (0.1, 0.3, 0.5, 0.7):
            t_ids = [i for i in np.unique(true) if i]
            p_ids = [i for i in np.unique(pred) if i]
            score = np.zeros((len(t_ids), len(p_ids)))
            for i, t in enumerate(t_ids):
                for j, p in enumerate(p_ids):
                    inter = np.sum((true == t) & (pred == p))
                    union = np.sum((true == t) | (pred == p))
                    score[i, j] = inter / union
            best = 0
            n = max(len(t_ids), len(p_ids))
            for perm in permutations(range(n)):
                tp = sum(1 for i, j in enumerate(perm) if i < len(t_ids) and j < len(p_ids) and score[i, j] >= th)
                best = max(best, tp)
            expected = best / (len(t_ids) + len(p_ids) - best)
            assert average_precision(pred, true, threshold=th) == pytest.approx(expected)


def _monai_dice(pred: np.ndarray, true: np.ndarray, classes: int) -> np.ndarray:
    """MONAI's DiceMetric per foreground class, empty targets scored (not skipped)."""
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    from monai.networks.utils import one_hot

    def hot(x: np.ndarray) -> object:
        return one_hot(torch.from_numpy(x.astype(np.int64))[None, None], num_classes=classes)

    metric = monai_metrics.DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    return metric(hot(pred), hot(true)).numpy()[0]


@pytest.mark.parametrize("case", ["random", "swapped", "empty_target", "class_only_in_prediction", "both_empty"])
def test_class_dice_equals_monai_dicemetric(case: str) -> None:
    rng = np.random.default_rng(3)
    true = rng.integers(0, 4, size=(12, 16, 16))
    pred = np.where(rng.random(true.shape) < 0.8, true, rng.integers(0, 4, size=true.shape))
    if case == "swapped":  # every class swapped: MONAI gives 0.0, binary Dice gave 1.0
        pred = np.where(true > 0, true % 3 + 1, 0)
    elif case == "empty_target":
        true = np.zeros_like(true)
    elif case == "class_only_in_prediction":  # an empty target, a prediction holding only class 2
        true = np.zeros_like(true)
        pred = np.where(pred == 2, 2, 0)
    elif case == "both_empty":
        true = pred = np.zeros_like(true)
    expected = _monai_dice(pred, true, 4)
    if case == "swapped":
        assert expected.tolist() == [0.0, 0.0, 0.0] and dice(pred, true) == 1.0
    np.testing.assert_allclose(class_dice(pred, true, num_classes=4), expected, atol=1e-6)
    if case == "class_only_in_prediction":
        assert class_dice(pred, true, num_classes=4).tolist() == [1.0, 0.0, 1.0]


def test_class_dice_classes_and_errors() -> None:
    a = np.array([[0, 1], [2, 2]])
    assert class_dice(a, a).tolist() == [1.0, 1.0]  # classes up to the largest label
    assert class_dice(a > 0, a > 0).tolist() == [1.0]
    assert class_dice(np.zeros((2, 2), int), np.zeros((2, 2), int)).tolist() == [1.0]
    with pytest.raises(InputError, match="integer label images"):
        class_dice(a.astype(np.float32), a)
    with pytest.raises(InputError, match="3 classes"):
        class_dice(a + 1, a, num_classes=3)
