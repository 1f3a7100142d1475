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
    "short_run box AP": 6.319204591138415,
    "short_run mask AP": 0.5184749244155185,
    "keypoint_run keypoint AP": 5.699058001038198,
    "keypoint_run box AP": 35.07294619398228,
    "pretraining top-1": 19.583333333333332,
    "shrunk GPU study: pretrained_gn_1x_seed0 box AP": 0.0021481438084636865,
    "shrunk GPU study: pretrained_gn_1x_seed1 box AP": 0.0,
    "shrunk GPU study: pretrained_gn_3x_seed0 box AP": 1.3869039738095965,
    "shrunk GPU study: pretrained_gn_3x_seed1 box AP": 1.7214654421277675,
    "shrunk GPU study: pretrained_gn_6x_seed0 box AP": 6.375483976969125,
    "shrunk GPU study: pretrained_gn_6x_seed1 box AP": 5.132848464716921,
    "shrunk GPU study: scratch_gn_1x_seed0 box AP": 0.04429390307451798,
    "shrunk GPU study: scratch_gn_1x_seed1 box AP": 0.0,
    "shrunk GPU study: scratch_gn_3x_seed0 box AP": 6.103115647018721,
    "shrunk GPU study: scratch_gn_3x_seed1 box AP": 3.9006873142490655,
    "shrunk GPU study: scratch_gn_6x_seed0 box AP": 4.900093565097295,
    "shrunk GPU study: scratch_gn_6x_seed1 box AP": 3.0956346349737944,
    "shrunk GPU study: scratch_gn_matched_seed0 box AP": 4.383770344256799,
    "shrunk GPU study: scratch_gn_matched_seed1 box AP": 5.990386507322412,
}
# The shrunk GPU study (tests/study/test_gpu_demo.py): every arm's final box AP, and the four verdicts.
PINNED_VERDICTS: dict[str, str] = {
    "1": "inconclusive: not converged",
    "2": "not tested: no evaluation at the early point",
    "3": "not tested: no such arms",
    "4": "not tested: too little signal",
}


# With PINNED_RECORD=FILE each value is appended to FILE instead of compared, so one run records every pinned
# number even where several moved (tools/dispatch_check.py compares them; also how to re-pin after a wanted change).
RECORD = "PINNED_RECORD"


def assert_pinned(name: str, value: float) -> None:
    expected = PINNED[name]
    if os.environ.get(RECORD):
        with open(os.environ[RECORD], "a") as record:
            record.write(json.dumps({"name": name, "value": value, "pinned": expected}) + "\n")
        return
    problem = portable.unsupported()
    if problem is not None:
        pytest.skip(f"{name} is pinned for portable arithmetic: {problem}")
    assert value == expected, (
        f"{name} is {value!r}, pinned at {expected!r}: if the change means to move it, update tests/pinned.py and "
        "say why in the commit message"
    )
