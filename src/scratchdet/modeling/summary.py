"""`scratchdet model summary`: parameters per stage, norm layers, and measured FLOPs of one training forward."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scratchdet.modeling.norm import norm_layers

# Parameter-name prefixes of torchvision's GeneralizedRCNN → the names the paper uses.
STAGE_PREFIXES = OrderedDict(
    [
        ("backbone.body.conv1", "stem (res1)"),
        ("backbone.body.bn1", "stem (res1)"),
        ("backbone.body.layer1", "res2"),
        ("backbone.body.layer2", "res3"),
        ("backbone.body.layer3", "res4"),
        ("backbone.body.layer4", "res5"),
        ("backbone.fpn", "fpn"),
        ("rpn", "rpn head"),
        ("roi_heads.box_head", "box head"),
        ("roi_heads.box_predictor", "box predictor"),
        ("roi_heads.mask_head", "mask head"),
        ("roi_heads.mask_predictor", "mask predictor"),
    ]
)


def parameters_per_stage(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{stage: (trainable, frozen)} parameter counts; frozen includes FrozenBN's fixed affine buffers."""
    counts: dict[str, list[int]] = {name: [0, 0] for name in dict.fromkeys(STAGE_PREFIXES.values())}
    counts["other"] = [0, 0]

    def stage_of(name: str) -> str:
        return next((stage for prefix, stage in STAGE_PREFIXES.items() if name.startswith(prefix)), "other")

    for name, parameter in model.named_parameters():
        counts[stage_of(name)][0 if parameter.requires_grad else 1] += parameter.numel()
    for name, buffer in model.named_buffers():
        if name.endswith((".weight", ".bias")):  # FrozenBatchNorm2d keeps its affine as buffers
            counts[stage_of(name)][1] += buffer.numel()
    return {stage: (t, f) for stage, (t, f) in counts.items() if t or f}


def training_forward_flops(model: nn.Module, height: int, width: int, num_boxes: int = 4) -> dict[str, int]:
    """FLOPs of one training-mode forward on one (height, width) image with `num_boxes` ground-truth boxes.

    Training mode fixes the work of the RoI heads (they see the sampled RoIs), which an inference pass on a
    random network does not (its detections depend on the weights). Counted by `torch.utils.flop_counter`.
    """
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(3, height, width, generator=generator)
    side = min(height, width) // 4
    boxes = torch.tensor([[i * 4.0, i * 4.0, i * 4.0 + side, i * 4.0 + side] for i in range(num_boxes)])
    masks = torch.zeros(num_boxes, height, width, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    target = {"boxes": boxes, "labels": torch.ones(num_boxes, dtype=torch.int64), "masks": masks}
    keypoint_predictor = getattr(model.roi_heads, "keypoint_predictor", None)
    if keypoint_predictor is not None:  # Keypoint R-CNN: each box's keypoints, all visible, inside it
        count = int(keypoint_predictor.kps_score_lowres.out_channels)
        spread = torch.linspace(0.1, 0.9, count)
        x = boxes[:, None, 0] + spread[None] * (boxes[:, None, 2] - boxes[:, None, 0])
        y = boxes[:, None, 1] + spread[None] * (boxes[:, None, 3] - boxes[:, None, 1])
        target["keypoints"] = torch.stack([x, y, torch.full_like(x, 2.0)], dim=2)
    was_training = model.training
    model.train()
    counter = FlopCounterMode(display=False)
    with counter, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model([image], [target])
    model.train(was_training)
    by_module = counter.get_flop_counts()
    total = int(counter.get_total_flops())
    parts = {"total": total}
    for module_name, label in (("backbone", "backbone + fpn"), ("rpn", "rpn"), ("roi_heads", "roi heads")):
        key = next((k for k in by_module if k.endswith(f".{module_name}")), None)
        if key is not None:
            parts[label] = int(sum(by_module[key].values()))
    return parts


def format_summary(model: nn.Module, height: int, width: int) -> str:
    lines = [f"{'stage':<16s} {'trainable':>12s} {'frozen':>12s}"]
    total = [0, 0]
    for stage, (trainable, frozen) in parameters_per_stage(model).items():
        lines.append(f"{stage:<16s} {trainable:>12,d} {frozen:>12,d}")
        total[0] += trainable
        total[1] += frozen
    lines.append(f"{'total':<16s} {total[0]:>12,d} {total[1]:>12,d}")
    norms = ", ".join(f"{name} x{count}" for name, count in norm_layers(model).items()) or "none"
    lines.append(f"norm layers: {norms}")
    flops = training_forward_flops(model, height, width)
    lines.append(f"FLOPs, one training forward of a {width}x{height} image (torch.utils.flop_counter):")
    lines += [f"  {part:<16s} {count / 1e9:>10.3f} GFLOPs" for part, count in flops.items()]
    return "\n".join(lines)
