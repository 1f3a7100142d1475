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
    "shrunk GPU study: pretrained_gn_1x_seed0 box AP": 0.002028135774471302,
    "shrunk GPU study: pretrained_gn_1x_seed1 box AP": 0.0,
    "shrunk GPU study: pretrained_gn_3x_seed0 box AP": 1.363432289826245,
    "shrunk GPU study: pretrained_gn_3x_seed1 box AP": 2.378682825797358,
    "shrunk GPU study: pretrained_gn_6x_seed0 box AP": 7.083528703010357,
    "shrunk GPU study: pretrained_gn_6x_seed1 box AP": 5.547180595294061,
    "shrunk GPU study: scratch_gn_1x_seed0 box AP": 0.046754675467546754,
    "shrunk GPU study: scratch_gn_1x_seed1 box AP": 0.0,
    "shrunk GPU study: scratch_gn_3x_seed0 box AP": 4.757931949570552,
    "shrunk GPU study: scratch_gn_3x_seed1 box AP": 3.331738173817382,
    "shrunk GPU study: scratch_gn_6x_seed0 box AP": 4.612950376352964,
    "shrunk GPU study: scratch_gn_6x_seed1 box AP": 3.2183992168317,
    "shrunk GPU study: scratch_gn_matched_seed0 box AP": 3.906854885853792,
    "shrunk GPU study: scratch_gn_matched_seed1 box AP": 6.169352257949049,
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
