"""Check that the suite's pinned numbers are the same whatever the CPU would choose, on one machine.

    python tools/dispatch_check.py              # the fast pinned tests under each setting below (about 15 min)
    python tools/dispatch_check.py --slow       # ... and the shrunk GPU study (about 5 min more per setting)
    python tools/dispatch_check.py --native     # also: the short pinned run without --portable, per setting

Another machine differs from this one in the kernels PyTorch, oneDNN, MKL, numpy and OpenBLAS pick for its CPU and
in its thread count. Each setting below forces one of those choices the way another CPU would make it, and the
pinned tests (tests/pinned.py) run under it with PINNED_RECORD, which collects every pinned number. They train
with portable arithmetic (`scratchdet --portable`), so every number must be identical under every setting, and
equal to its pin; the exit status is 1 otherwise. Settings this CPU cannot run (AVX-512 kernels on a CPU without
AVX-512) are left out and named.

--native trains the short pinned run under each setting with the CPU's own kernels instead, and prints its AP: how
far the numbers of a run without --portable move with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAST = [
    "tests/engine/test_training.py::test_short_training_lowers_the_loss_and_reaches_positive_box_ap",
    "tests/engine/test_pretrain.py::test_pretraining_reaches_far_above_chance",
    "tests/test_keypoints.py::test_keypoint_rcnn_trains_with_finite_losses_and_reaches_keypoint_ap",
]
SLOW = ["tests/study/test_gpu_demo.py::test_the_gpu_study_shrunk_to_a_cpu_runs_every_arm_and_judges"]
# name: (environment, CPU flag it needs or None). Each is one choice another machine could make by itself.
SETTINGS: dict[str, tuple[dict[str, str], str | None]] = {
    "this CPU": ({}, None),
    "PyTorch AVX-512": ({"ATEN_CPU_CAPABILITY": "avx512"}, "avx512bw"),
    "PyTorch AVX2": ({"ATEN_CPU_CAPABILITY": "avx2"}, "avx2"),
    "PyTorch default": ({"ATEN_CPU_CAPABILITY": "default"}, None),
    "oneDNN SSE4.1": ({"ONEDNN_MAX_CPU_ISA": "SSE41"}, None),
    "MKL SSE4.2": ({"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}, None),
    "4 threads": ({"OMP_NUM_THREADS": "4"}, None),
    "numpy SSE4.2": ({"NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"}, None),
    "OpenBLAS SSE3": ({"OPENBLAS_CORETYPE": "Prescott"}, None),
}


def run_pinned_tests(name: str, environment: dict[str, str], tests: list[str], folder: Path) -> dict[str, Any]:
    record = folder / f"{name.replace(' ', '_')}.jsonl"
    env = {**os.environ, **environment, "PINNED_RECORD": str(record)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    values = {}
    if record.is_file():
        values = {r["name"]: r["value"] for r in map(json.loads, record.read_text().splitlines())}
    tail = result.stdout.strip().splitlines()[-1:] if result.returncode else []
    return {"values": values, "seconds": time.perf_counter() - started, "failed": tail}


def native_short_run(name: str, environment: dict[str, str], data: Path, folder: Path) -> dict[str, Any]:
    from tests.engine.test_training import short_run_arguments

    out = folder / f"native_{name.replace(' ', '_')}"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scratchdet", *short_run_arguments(data, out)],
                   env={**os.environ, **environment}, capture_output=True, check=True)  # fmt: skip
    final = json.loads((out / "summary.json").read_text())["final"]
    return {"box": final["bbox"]["AP"], "mask": final["segm"]["AP"], "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", action="store_true", help="also the shrunk GPU study's pins")
    parser.add_argument("--native", action="store_true", help="also the short run without --portable")
    parser.add_argument("--jobs", type=int, default=2, help="settings run at once (each run is one thread)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), metavar="NAME",
                        help=f"the settings to run (default: all of {', '.join(SETTINGS)})")  # fmt: skip
    args = parser.parse_args()

    from tests.pinned import PINNED

    from scratchdet.portable import cpu_flags

    flags = cpu_flags() or set()
    chosen = {name: SETTINGS[name] for name in args.settings}
    settings = {name: env for name, (env, needs) in chosen.items() if needs is None or needs in flags}
    skipped = [name for name in chosen if name not in settings]
    tests = FAST + (SLOW if args.slow else [])
    with tempfile.TemporaryDirectory() as temporary, ThreadPoolExecutor(args.jobs) as pool:
        folder = Path(temporary)
        futures = {name: pool.submit(run_pinned_tests, name, env, tests, folder) for name, env in settings.items()}
        results = {name: future.result() for name, future in futures.items()}
        native = {}
        if args.native:
            from tests.conftest import SMALL_SPEC

            from scratchdet.data.synthetic import generate

            generate(folder / "data", SMALL_SPEC, workers=2, quiet=True)
            jobs = {n: pool.submit(native_short_run, n, env, folder / "data", folder) for n, env in settings.items()}
            native = {name: job.result() for name, job in jobs.items()}

    names = [name for name in PINNED if any(name in r["values"] for r in results.values())]
    identical = True
    print(f"pinned tests under {len(settings)} settings (left out, not on this CPU: {', '.join(skipped) or 'none'})")
    for pinned in names:
        seen = {setting: r["values"].get(pinned) for setting, r in results.items()}
        same = all(value == PINNED[pinned] for value in seen.values())
        identical &= same
        print(f"  {pinned:<52s} {'identical' if same else 'DIFFERS'}  pinned {PINNED[pinned]!r}")
        for setting, value in seen.items():
            if value != PINNED[pinned]:
                print(f"      {setting}: {value!r}")
    for setting, r in results.items():
        note = f"  ({r['failed'][0]})" if r["failed"] else ""
        print(f"  {setting:<20s} {r['seconds']:6.0f} s{note}")
    if native:
        print("the short pinned run without --portable (this CPU's kernels):")
        for setting, r in native.items():
            print(f"  {setting:<20s} box AP {r['box']:.4f}  mask AP {r['mask']:.4f}  {r['seconds']:5.0f} s")
    print(f"identical to the pins under every setting: {'yes' if identical and names else 'NO'}")
    return 0 if identical and names else 1


if __name__ == "__main__":
    raise SystemExit(main())
