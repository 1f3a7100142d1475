"""Numbers pinned from deterministic CPU runs of the suite: a change that moves them fails here.

Every run below is deterministic on a CPU (fixed seeds, deterministic kernels, one process), so its metrics are
reproducible to the last digit on one machine (pinned on the 2-core machine CI runs on; the thread count can change
the order of sums); the tolerance only absorbs rounding differences between CPUs' vector units.
When a change moves a pinned number on purpose (a new default, a fixed bug), update it here in the same commit and
say why in the commit message.
"""

from __future__ import annotations

import pytest

PINNED: dict[str, float] = {
    "short_run box AP": 5.8957966159543735,
    "short_run mask AP": 0.5891303416055892,
    "keypoint_run keypoint AP": 2.2721296854960222,
    "keypoint_run box AP": 33.09821449723802,
    "pretraining top-1": 22.916666666666668,
    "shrunk GPU study: pretrained_gn_1x_seed0 box AP": 0.0021738700816189404,
    "shrunk GPU study: pretrained_gn_1x_seed1 box AP": 0.0,
    "shrunk GPU study: pretrained_gn_3x_seed0 box AP": 2.0405976081479116,
    "shrunk GPU study: pretrained_gn_3x_seed1 box AP": 2.5634705491574215,
    "shrunk GPU study: pretrained_gn_6x_seed0 box AP": 6.692030555712576,
    "shrunk GPU study: pretrained_gn_6x_seed1 box AP": 5.18533487964181,
    "shrunk GPU study: scratch_gn_1x_seed0 box AP": 0.022745517795022745,
    "shrunk GPU study: scratch_gn_1x_seed1 box AP": 0.0,
    "shrunk GPU study: scratch_gn_3x_seed0 box AP": 3.5499005290727794,
    "shrunk GPU study: scratch_gn_3x_seed1 box AP": 2.142368256064881,
    "shrunk GPU study: scratch_gn_6x_seed0 box AP": 4.7748599859986,
    "shrunk GPU study: scratch_gn_6x_seed1 box AP": 2.3252760857927224,
    "shrunk GPU study: scratch_gn_matched_seed0 box AP": 3.8495258497091656,
    "shrunk GPU study: scratch_gn_matched_seed1 box AP": 0.0,
}
# The shrunk GPU study (tests/study/test_gpu_demo.py): every arm's final box AP, and the four verdicts.
PINNED_VERDICTS: dict[str, str] = {
    "1": "inconclusive: not converged",
    "2": "not tested: no evaluation at the early point",
    "3": "not tested: no such arms",
    "4": "not tested: too little signal",
}
RELATIVE, ABSOLUTE = 0.03, 0.05  # 3% of the value, and at least 0.05 points


def assert_pinned(name: str, value: float) -> None:
    expected = PINNED[name]
    assert value == pytest.approx(expected, rel=RELATIVE, abs=ABSOLUTE), (
        f"{name} is {value!r}, pinned at {expected!r}: if the change means to move it, update tests/pinned.py and "
        "say why in the commit message"
    )
