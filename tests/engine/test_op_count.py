"""Host waits counted on the CPU: what a training step would make the host wait for on a GPU.

The counts are structural (so many per image, per FPN level, per loss), not timings, and the same on every CPU:
the step's budget below fails when a change adds a wait.
"""

from __future__ import annotations

from pathlib import Path

import torch

from scratchdet.config import load_config
from scratchdet.engine.detection import build_detection, train_batches
from scratchdet.engine.op_count import count_ops
from scratchdet.engine.trainer import Trainer
from scratchdet.engine.training import seed_everything
from scratchdet.modeling.roi_align import SeparableMultiScaleRoIAlign
from tests.conftest import tiny_training_overrides

# Host waits of one training step of the tiny Mask R-CNN, its batch already loaded, as measured when the budget was
# set: one number read, by the check for degenerate boxes, at any batch size. Matching, sampling, proposal filtering
# and RoI pooling wait for nothing seen here (91 waits at 4 images before they were batched: torchvision's heads
# wait several times an image, and its poolers once an FPN level). Not seen on the CPU (copies to the host dispatch
# nothing here, and NMS is one kernel): on a GPU one an NMS call (`heads.nms_images_per_call`), two reads of counts
# (`tolist`) and the losses' one read.
# Lower the budget when a change removes waits; a change that adds one fails here.
STEP_WAIT_BUDGET = 1
# Operations a step dispatches for each image more, forward and backward, RoIs pooled by torchvision's kernel: 20
# of them NMS a level and image (4 operations at each of the 5 levels; on a GPU, images share an NMS call), about 3
# views into the batch's buffers (images and masks of mixed sizes; a view launches no kernel) and the groups of
# images of one size; padding the ground truth, gathering each image's RoIs, the anchors, mask targets, normalising
# and batching the images and the box check take the same number of operations at any batch size (before they
# did, a step dispatched about 80 an image).
STEP_OPS_PER_IMAGE = 31


def test_waits_are_counted_by_kind_and_arithmetic_waits_for_nothing() -> None:
    values = torch.arange(6.0)

    def host_reads() -> None:
        float(values.sum())  # a tensor read as a number
        torch.where(values > 2)  # data-dependent size
        values[values > 3] = 0.0  # boolean-mask indexing finds the mask's positions first

    counts = count_ops(host_reads)
    assert counts.host_waits == 3
    assert set(counts.waits) == {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.index_put_.default"}
    assert count_ops(lambda: (values * 2 + 1).exp().sum()).host_waits == 0


def _trainer(synth_dir: Path, images: int) -> Trainer:
    config = load_config("demo/mask_rcnn", [*tiny_training_overrides(synth_dir), f"solver.images_per_batch={images}"])
    seed_everything(0)
    setup = build_detection(config, torch.device("cpu"), quiet=True)
    # The batches loaded beforehand: the step's own waits are counted, not the data transforms' (a loader's
    # workers run those, off the step). The first one twice: the counted second step then finds what the first
    # set up for its sizes (the poolers' scales, the RPN's anchors) as every later step of a run does.
    first = next(train_batches(setup.dataset, config, 0))
    return Trainer(setup.model, setup.optimizer, setup.schedule, iter([first, first]))


def test_a_training_step_reads_its_losses_at_once_and_waits_within_its_budget(synth_dir: Path) -> None:
    trainer = _trainer(synth_dir, 4)
    trainer.run_step()  # the first step also sets up (the poolers' scales: more reads; the anchors)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(2.0), "c": torch.tensor(3.0)}
    # One read of all losses (`tolist` on their stack: a copy to the host on a GPU, no operation on the CPU), not
    # one `float()` a loss.
    assert count_ops(lambda: trainer._reduce(losses, trainer.counts)).host_waits == 0
    step = count_ops(trainer.run_step)
    assert 0 < step.host_waits <= STEP_WAIT_BUDGET, dict(step.waits)


def test_a_training_step_waits_as_often_for_8_images_as_for_2_and_dispatches_little_more(synth_dir: Path) -> None:
    counts = {}
    for images in (2, 8):
        trainer = _trainer(synth_dir, images)
        for module in trainer.model.modules():  # RoI pooling by torchvision's kernel, as on a GPU: the CPU's own
            if isinstance(module, SeparableMultiScaleRoIAlign):  # splits many RoIs into more pieces
                module.separable = False
        trainer.run_step()
        counts[images] = count_ops(trainer.run_step)
    assert counts[2].waits == counts[8].waits
    assert 0 < counts[8].total - counts[2].total <= 6 * STEP_OPS_PER_IMAGE
