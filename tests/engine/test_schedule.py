import pytest

from scratchdet.engine.schedule import Schedule, build_schedule, parameter_groups
from scratchdet.errors import ScratchdetError
from tests.conftest import build_test_detector
from tests.modeling.test_detector import SMALL


def _coco(multiplier: float, images: int = 16) -> Schedule:
    return build_schedule(
        multiplier=multiplier, images_per_batch=images, base_lr=0.02, warmup_iters=1000, warmup_factor=0.001
    )


@pytest.mark.parametrize(
    ("multiplier", "total", "steps"),
    [
        (1, 90_000, (60_000, 80_000)),
        (2, 180_000, (120_000, 160_000)),
        (3, 270_000, (210_000, 250_000)),
        (6, 540_000, (480_000, 520_000)),
        (9, 810_000, (750_000, 790_000)),
    ],
)
def test_published_coco_schedules_at_16_images(multiplier: float, total: int, steps: tuple[int, int]) -> None:
    schedule = _coco(multiplier)
    assert (schedule.total_iterations, schedule.steps, schedule.base_lr) == (total, steps, 0.02)


def test_detectron2_9x_at_64_images() -> None:
    schedule = _coco(9, images=64)
    assert schedule.total_iterations == 202_500
    assert schedule.steps == (187_500, 197_500)
    assert schedule.base_lr == pytest.approx(0.08)


def test_lr_values_with_warmup_and_steps() -> None:
    schedule = _coco(1)
    assert schedule.lr_at(0) == pytest.approx(0.02 * 0.001)
    assert schedule.lr_at(500) == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))
    assert schedule.lr_at(1000) == pytest.approx(0.02)
    assert schedule.lr_at(59_999) == pytest.approx(0.02)
    assert schedule.lr_at(60_000) == pytest.approx(0.002)
    assert schedule.lr_at(80_000) == pytest.approx(0.0002)


def test_epoch_based_schedule_scales_the_tail_with_the_unit() -> None:
    # 1x = 12 epochs of 1,000 images at 8 per batch = 1,500 iterations; 6x = 9,000 with the last
    # 2/3 and 2/9 of a 1x (1,000 and 333 iterations) at the lower rates.
    schedule = build_schedule(
        multiplier=6,
        images_per_batch=8,
        base_lr=0.02,
        warmup_iters=100,
        warmup_factor=0.001,
        base_epochs=12,
        dataset_size=1000,
    )
    assert schedule.total_iterations == 9000
    assert schedule.steps == (8000, 8667)
    assert schedule.base_lr == pytest.approx(0.01)
    one_x = build_schedule(
        multiplier=1,
        images_per_batch=8,
        base_lr=0.02,
        warmup_iters=100,
        warmup_factor=0.001,
        base_epochs=12,
        dataset_size=1000,
    )
    assert (one_x.total_iterations, one_x.steps) == (1500, (1000, 1333))


def test_a_step_outside_the_run_or_an_empty_run_is_refused() -> None:
    with pytest.raises(ScratchdetError, match="not inside the run"):
        Schedule(100, (50, 100), 0.02, 10, 0.001, 16)
    with pytest.raises(ScratchdetError, match="has 0 iterations"):
        build_schedule(
            multiplier=0.001,
            images_per_batch=16,
            base_lr=0.02,
            warmup_iters=0,
            warmup_factor=1,
            base_epochs=1,
            dataset_size=10,
        )


def test_norm_parameters_and_biases_get_their_own_weight_decay() -> None:
    model = build_test_detector(norm="gn", **SMALL)
    groups = {
        g["name"]: g for g in parameter_groups(model, weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=0.0)
    }
    norm_count = sum(p.numel() for m in model.modules() if type(m).__name__ == "GroupNorm" for p in m.parameters())
    assert sum(p.numel() for p in groups["norm"]["params"]) == norm_count
    assert groups["norm"]["weight_decay"] == 0.0 and groups["weight"]["weight_decay"] == 1e-4
    assert all(p.dim() == 1 for p in groups["bias"]["params"])
    assert all(p.dim() > 1 for p in groups["weight"]["params"])
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len([p for p in model.parameters() if p.requires_grad])
