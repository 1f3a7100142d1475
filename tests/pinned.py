"""Numbers pinned from deterministic CPU runs of the suite: a change that moves them fails here.

Every run below is deterministic (fixed seeds, one process) and computes with portable arithmetic
(`scratchdet --portable`, `tests.conftest.run_pinned`): the same kernels, matrix-product branch and thread count on
every x86-64 CPU with AVX2, so its metrics are the same to the last digit on any such machine, and are compared
exactly. (With each CPU's own fastest kernels a few hundred training steps turn last-bit differences into AP a
point or more apart.)
When a change moves a pinned number on purpose (a new default, a fixed bug), update it here in the same commit and
say why in the commit message.
"""

from __future__ import annotations

import json
import os

import pytest

from scratchdet import portable

PINNED: dict[str, float] = {
    "short_run box AP": 6.629001547709208,
    "short_run mask AP": 0.6023102310231023,
    "keypoint_run keypoint AP": 5.699058001038198,
    "keypoint_run box AP": 35.07294619398228,
    "pretraining top-1": 19.583333333333332,
    "shrunk GPU study: pretrained_gn_1x_full_seed0 box AP": 0.0,
    "shrunk GPU study: pretrained_gn_1x_full_seed1 box AP": 0.0,
    "shrunk GPU study: pretrained_gn_1x_n40_seed0 box AP": 0.0017709087981968928,
    "shrunk GPU study: pretrained_gn_1x_n40_seed1 box AP": 0.0,
    "shrunk GPU study: pretrained_gn_3x_full_seed0 box AP": 5.718036780458232,
    "shrunk GPU study: pretrained_gn_3x_full_seed1 box AP": 4.699947707866235,
    "shrunk GPU study: pretrained_gn_3x_n40_seed0 box AP": 1.9345953560262086,
    "shrunk GPU study: pretrained_gn_3x_n40_seed1 box AP": 3.599205386574437,
    "shrunk GPU study: scratch_gn_1x_full_seed0 box AP": 0.0,
    "shrunk GPU study: scratch_gn_1x_full_seed1 box AP": 0.0,
    "shrunk GPU study: scratch_gn_1x_n40_seed0 box AP": 0.04818607398389664,
    "shrunk GPU study: scratch_gn_1x_n40_seed1 box AP": 0.0,
    "shrunk GPU study: scratch_gn_3x_full_seed0 box AP": 4.605305887455695,
    "shrunk GPU study: scratch_gn_3x_full_seed1 box AP": 3.773799211153608,
    "shrunk GPU study: scratch_gn_3x_n40_seed0 box AP": 6.738265493215987,
    "shrunk GPU study: scratch_gn_3x_n40_seed1 box AP": 3.4577450553717295,
    "shrunk GPU study: scratch_gn_matched_full_seed0 box AP": 6.1852347681017505,
    "shrunk GPU study: scratch_gn_matched_full_seed1 box AP": 5.3996938155354,
}
# The shrunk GPU study (tests/study/test_gpu_demo.py): every arm's final box AP, and the four verdicts.
PINNED_VERDICTS: dict[str, str] = {
    "1": "inconclusive: not converged",
    "2": "inconclusive: not converged",
    "3": "inconclusive: not converged",
    "4": "not tested: too little signal",
}


# With PINNED_RECORD=FILE each value is appended to FILE instead of compared, so one run records every pinned
# number even where several moved (tools/dispatch_check.py compares them; also how to re-pin after a wanted change).
RECORD = "PINNED_RECORD"


def assert_pinned(name: str, value: float) -> None:
    expected = PINNED.get(name)
    if os.environ.get(RECORD):
        with open(os.environ[RECORD], "a") as record:
            record.write(json.dumps({"name": name, "value": value, "pinned": expected}) + "\n")
        return
    problem = portable.unsupported()
    if problem is not None:
        pytest.skip(f"{name} is pinned for portable arithmetic: {problem}")
    assert expected is not None, f"{name} is not pinned: record it (PINNED_RECORD=FILE) and add it to tests/pinned.py"
    assert value == expected, (
        f"{name} is {value!r}, pinned at {expected!r}: if the change means to move it, update tests/pinned.py and "
        "say why in the commit message"
    )
