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


def test_time_budget_stops_training_and_says_so(images2d):
    teacher = nets.resunet2d(ch=(8, 16, 32))
    student = prune(teacher, (1, 1, 32, 32), PruneSettings(ratio=0.5)).model
    settings = FineTuneSettings(steps=50, eval_every=10, budget_minutes=1e-9)  # spent after the first step
    result = distill(student, teacher, images2d[:2], settings, tile=(32, 32))
    assert result.steps == 1 and result.out_of_time and not result.stopped_early
    assert result.to_dict()["out_of_time"] is True and result.to_dict()["steps"] == 1
    with pytest.raises(InputError, match="fine_tune.budget_minutes must be positive, got 0"):
        FineTuneSettings(budget_minutes=0)


def test_the_guards_metric_chooses_the_weights_kept(images2d):
    teacher = nets.resunet2d(ch=(8, 16, 32))
    student = prune(teacher, (1, 1, 32, 32), PruneSettings(ratio=0.5)).model
    start = {k: v.clone() for k, v in student.state_dict().items()}

    calls = []

    def falling(candidate, reference):  # scores each check lower than the last: the start stays the best
        calls.append(candidate.shape)
        return 1.0 / len(calls)

    settings = FineTuneSettings(steps=6, lr=2e-3, eval_every=2, patience=5)
    result = distill(student, teacher, images2d[:2], settings, tile=(32, 32), metric=falling)
    assert result.selected_by == "falling" and result.steps == 6 and len(calls) == 4  # before, then every 2 steps
    assert all(torch.equal(v, start[k]) for k, v in result.model.state_dict().items())  # the start scored best


def test_augmentation_flips_and_turns_square_tiles():
    from ebai.compress._distillation import _augment

    tile = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    rng = np.random.default_rng(0)
    views = {_augment(tile, rng).tobytes() for _ in range(200)}
    assert len(views) == 8  # the eight symmetries of a square
    oblong = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    assert len({_augment(oblong, rng).tobytes() for _ in range(200)}) == 4  # flips only


def test_feature_matching_trains_through_the_hidden_layers_and_leaves_no_hooks(images2d):
    from ebai.compress._distillation import _Attention

    teacher = nets.resunet2d()
    student = prune(teacher, (1, 1, 48, 48), PruneSettings(ratio=0.5)).model
    matched = _Attention(student, teacher)
    x = torch.from_numpy(np.stack([fit_tile(images2d[0], (48, 48), center=True)]))
    with torch.no_grad():
        teacher(x), student(x)
        assert len(matched.names) == 8 and float(matched.loss()) > 0  # pruned hidden layers differ
        teacher(x), teacher(x)
        matched.maps["student"] = dict(matched.maps["teacher"])
        assert float(matched.loss()) == 0.0
    matched.close()
    settings = FineTuneSettings(steps=20, lr=2e-3, eval_every=10, feature_weight=1.0)
    result = distill(student, teacher, images2d[:3], settings, tile=(48, 48))
    assert result.pearson_after > result.pearson_before
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    with pytest.raises(InputError, match="fine_tune.feature_weight must be 0 or more"):
        FineTuneSettings(feature_weight=-1)


def test_cosine_schedule_decays_over_the_steps_or_the_time_whichever_ends_first(monkeypatch):
    """Counted in steps only, a time budget that ran out first left the learning rate high at the end."""
    from ebai.compress import _distillation
    from ebai.compress._distillation import _done, _rate

    assert _rate("constant", 0.3) == 1.0
    assert _rate("cosine", 0.05) == pytest.approx(0.5)  # half way through the warm-up (a tenth of the budget)
    assert _rate("cosine", 0.1) == pytest.approx(1.0) and _rate("cosine", 0.55) == pytest.approx(0.5)
    assert _rate("cosine", 1.0) == pytest.approx(0.0)
    assert _done(49, 100, started=0.0, deadline=None) == 0.5
    monkeypatch.setattr(_distillation.time, "perf_counter", lambda: 75.0)
    assert _done(9, 100, started=0.0, deadline=100.0) == pytest.approx(0.75)  # the time decides
    assert _done(89, 100, started=0.0, deadline=100.0) == pytest.approx(0.9)  # the steps decide
    monkeypatch.setattr(_distillation.time, "perf_counter", lambda: 130.0)
    assert _done(9, 100, started=0.0, deadline=100.0) == 1.0


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_every_output_channel_counts_whatever_its_scale(kind):
    """Normalised as one, a channel of large values (cell-probability logits) drowned one of small values (flows)."""
    from ebai.compress._distillation import _loss_fn

    rng = np.random.default_rng(0)
    teacher = torch.from_numpy(rng.standard_normal((2, 2, 16, 16)).astype(np.float32))
    teacher[:, 1] *= 100.0  # channel 1 is 100 times the scale of channel 0
    loss = _loss_fn(kind)
    off_small, off_large = teacher.clone(), teacher.clone()
    off_small[:, 0] += 0.5 * teacher[:, 0].std()  # the same error relative to each channel's own spread
    off_large[:, 1] += 0.5 * teacher[:, 1].std()
    assert float(loss(off_small, teacher)) == pytest.approx(float(loss(off_large, teacher)), rel=1e-5)
    assert float(loss(off_small, teacher)) > 0.05 and float(loss(teacher, teacher)) == 0.0
