from __future__ import annotations

import compress_nets as nets
import numpy as np
import pytest
import torch

from ebai.compress import FineTuneSettings, PruneSettings, distill, prune
from ebai.compress._samples import fit_tile
from ebai.core.errors import InputError
from ebai.core.metrics import pearson

TILE = (48, 48)


def _pearson_to_teacher(student, teacher, tiles):
    x = torch.from_numpy(tiles)
    with torch.no_grad():
        return pearson(student(x).numpy(), teacher(x).numpy())


def test_distillation_raises_pearson_to_the_original_on_unseen_images(images2d):
    teacher = nets.resunet2d()
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = prune(teacher, (1, 1, *TILE), PruneSettings(method="l1", ratio=0.5)).model
    unseen = np.stack([fit_tile(img, TILE, center=True) for img in images2d[3:]])  # never trained on
    before = _pearson_to_teacher(student, teacher, unseen)
    result = distill(
        student, teacher, images2d[:3], FineTuneSettings(steps=20, eval_every=10, lr=2e-3), tile=TILE, seed=0
    )
    after = _pearson_to_teacher(result.model, teacher, unseen)
    print(f"pruned 2D residual U-Net, Pearson to the original on unseen images: {before:.4f} -> {after:.4f}")
    assert after > before + 0.03, (before, after)
    assert result.pearson_after > result.pearson_before
    assert result.steps == 20 and not result.stopped_early
    assert all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())  # the teacher is never changed


def test_early_stop_keeps_the_best_weights(images2d):
    teacher = nets.resunet2d(ch=(8, 16, 32))
    student = prune(teacher, (1, 1, 32, 32), PruneSettings(ratio=0.5)).model
    start = {k: v.clone() for k, v in student.state_dict().items()}
    # a learning rate this small cannot improve the loss by 0.1%: training stops after `patience` checks
    result = distill(
        student, teacher, images2d[:2], FineTuneSettings(steps=50, lr=1e-12, eval_every=2, patience=2), tile=(32, 32)
    )
    assert result.stopped_early and result.steps == 4
    assert result.loss_after == result.loss_before
    assert all(torch.equal(v, start[k]) for k, v in result.model.state_dict().items())


def test_unknown_loss():
    with pytest.raises(InputError, match="unknown distillation loss"):
        distill(
            torch.nn.Conv2d(1, 1, 1),
            torch.nn.Conv2d(1, 1, 1),
            [np.zeros((1, 8, 8), np.float32)],
            FineTuneSettings(loss="huber"),
            tile=(8, 8),
        )


def test_fit_tile_pads_small_images_and_crops_large_ones():
    small = np.arange(1 * 5 * 6, dtype=np.float32).reshape(1, 5, 6)
    assert fit_tile(small, (8, 8)).shape == (1, 8, 8)
    big = np.random.default_rng(0).standard_normal((2, 20, 30)).astype(np.float32)
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(fit_tile(big, (8, 8), rng1), fit_tile(big, (8, 8), rng2))
    assert np.array_equal(fit_tile(big, (8, 8), center=True), big[:, 6:14, 11:19])
