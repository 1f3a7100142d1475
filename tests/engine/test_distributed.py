"""Real multi-process runs of the CLI (gloo, 2 ranks, on CPU): DDP against one process, sharded evaluation,
a rank that dies or hangs, resuming with another process count, distributed pre-training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scratchdet import portable
from scratchdet.engine.rundir import read_metrics
from tests.conftest import tiny_training_overrides
from tests.engine.test_faults import KILL_AT, PLANTED

# Settings under which 2 processes × 2 images compute exactly what 1 process × 4 images computes, up to the
# order of floating-point sums:
# - every image is resized to fit 64×64 and padded to 64×64, so a per-process batch pads like the global one
#   (GroupNorm's statistics see the padding);
# - 2 anchors and 4 RoIs are sampled per image with 1 positive each, always available, so every loss is
#   normalized by the same count per image and the mean of the two processes' means is the global mean.
EQUAL_SPLIT = ["data.max_size=64", "model.rpn_batch_size_per_image=2", "model.roi_batch_size_per_image=4",
               "solver.base_epochs=null", "eval.max_images=12"]  # fmt: skip
SIX_ITERATIONS = "solver.schedule=0.0000166667x"  # 6 iterations of 4 images
LONG_RUN = "solver.schedule=0.0005556x"  # 200 iterations
SPARSE_OUTPUT = ["output.checkpoint_period=20", "output.log_period=2"]
# Two partial sums averaged by DDP instead of one sum: float32 rounding, about 1e-6 after 6 steps (measured).
WEIGHT_TOLERANCE = 1e-5


# Every process of these tests computes portably: how far 1 and 2 processes drift apart is then the same on every
# CPU (with a CPU's own kernels it is not: see the SyncBN test).
PORTABLE = {"OMP_NUM_THREADS": "1", portable.SWITCH: "1"}


def _scratchdet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scratchdet", *args], capture_output=True, text=True,
                          env={**os.environ, **PORTABLE, **(env or {})}, check=False)  # fmt: skip


def _train(synth_dir: Path, out: Path, extra: list[str], *launch: str) -> subprocess.CompletedProcess[str]:
    overrides = [*tiny_training_overrides(synth_dir), *EQUAL_SPLIT, *extra]
    return _scratchdet("train", "demo/mask_rcnn", *overrides, "--out", str(out), *launch)


def _final_state(run_dir: Path) -> dict:
    pointer = (run_dir / "checkpoints" / "last_checkpoint").read_text()
    return torch.load(run_dir / "checkpoints" / pointer, weights_only=True)


@pytest.fixture(scope="module")
def one_and_two(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    for name, launch in (("one", []), ("two", ["--nproc", "2"])):
        result = _train(synth_dir, root / name, [SIX_ITERATIONS, "output.log_period=1"], *launch)
        assert result.returncode == 0, result.stderr
    return root / "one", root / "two"


def test_two_processes_end_with_the_weights_of_one(one_and_two: tuple[Path, Path]) -> None:
    one, two = (_final_state(run) for run in one_and_two)
    assert one["iteration"] == two["iteration"] == 6
    worst = max((one["model"][k] - two["model"][k]).abs().max().item() for k in one["model"])
    print(f"largest weight difference, 1 vs 2 processes: {worst:.2e}")
    assert worst <= WEIGHT_TOLERANCE
    moved = max((one["model"][k] - _initial(one_and_two[0])[k]).abs().max().item() for k in one["model"])
    assert moved > 100 * WEIGHT_TOLERANCE  # the runs trained: equal weights are not trivially equal
    assert one["counts"] == two["counts"]  # summed over the processes
    assert len(two["rng"]) == 2  # each process's random state


def _initial(run_dir: Path) -> dict[str, torch.Tensor]:
    from scratchdet.assemble import detector_from_config
    from scratchdet.config import load_config
    from scratchdet.engine.training import seed_everything

    config = load_config(str(run_dir / "config.yaml"))
    seed_everything(config.seed)
    model, _ = detector_from_config(config, 6)
    return model.state_dict()


def test_only_rank_zero_writes_and_the_records_say_how_many_processes(one_and_two: tuple[Path, Path]) -> None:
    one, two = one_and_two
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    logged = [r["iteration"] for r in read_metrics(two) if "total_loss" in r]
    assert logged == [1, 2, 3, 4, 5, 6]  # once each, not once per process
    assert json.loads((two / "summary.json").read_text())["machine"]["processes"] == 2
    assert "2 processes of 2 images" in (two / "log.txt").read_text()
    # Losses are averaged over the processes: the same numbers as the single process logged.
    for mine, theirs in zip(read_metrics(one), read_metrics(two), strict=True):
        if "total_loss" in mine:
            assert mine["total_loss"] == pytest.approx(theirs["total_loss"], abs=1e-4)
            assert mine["pixels_seen"] == theirs["pixels_seen"]


def test_distributed_evaluation_equals_single_process_evaluation(one_and_two: tuple[Path, Path]) -> None:
    _, two = one_and_two
    single = _scratchdet("eval", str(two), "--detections", str(two.parent / "single.json"))
    sharded = _scratchdet("eval", str(two), "--nproc", "2", "--detections", str(two.parent / "sharded.json"))
    assert single.returncode == 0 and sharded.returncode == 0, single.stderr + sharded.stderr
    assert "bbox: AP" in single.stdout and "segm: AP" in single.stdout
    assert sharded.stdout == single.stdout  # printed once (rank 0)
    # The detections themselves: each process scored half the images, gathered back into the one process's order.
    ours, theirs = (json.loads((two.parent / f"{name}.json").read_text()) for name in ("sharded", "single"))
    assert len(theirs) > 0 and ours == theirs


def test_a_batch_that_does_not_split_is_refused_before_launching(synth_dir: Path, tmp_path: Path) -> None:
    result = _train(synth_dir, tmp_path / "run", [SIX_ITERATIONS], "--nproc", "3")
    assert result.returncode == 2
    assert "4 images per batch cannot be shared by 3 processes" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_launcher_passes_on_everything_but_its_own_option() -> None:
    from scratchdet.engine.distributed import strip_option

    argv = ["train", "cfg", "a=1", "--nproc", "2", "--out", "x", "--nproc=4"]
    assert strip_option(argv, "--nproc") == ["train", "cfg", "a=1", "--out", "x"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_ranks(
    synth_dir: Path, out: Path, extra_env: dict[str, str], faults: dict[int, tuple[str, int]]
) -> list[subprocess.Popen[str]]:
    """Two ranks started the way torchrun starts them, but without its agent (which would stop the survivor
    itself): what the processes do on their own when a peer on another node fails. `faults`: per rank, a fault
    planted by tests/engine/kill_at.py (point, n)."""
    overrides = [*tiny_training_overrides(synth_dir), *EQUAL_SPLIT, LONG_RUN, *SPARSE_OUTPUT]
    env = {**os.environ, **PORTABLE, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": "2", **extra_env}  # fmt: skip
    return [
        subprocess.Popen(
            [*_launcher(faults.get(rank)), "train", "demo/mask_rcnn", *overrides, "--out", str(out)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]


def _launcher(fault: tuple[str, int] | None) -> list[str]:
    if fault is None:
        return [sys.executable, "-m", "scratchdet"]
    return [sys.executable, str(KILL_AT), fault[0], str(fault[1])]


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_when_a_rank_dies_or_hangs_the_other_stops_with_a_clear_error(
    synth_dir: Path, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "run"
    # Rank 1 dies (SIGKILL) or stops answering (SIGSTOP) at its 25th step, past the checkpoint at 20.
    fault = ("step" if how == "killed" else "hang", 25)
    ranks = _start_ranks(synth_dir, out, {"SCRATCHDET_DIST_TIMEOUT": "5"}, {1: fault})
    try:
        _, stderr = ranks[0].communicate(timeout=300)
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    assert (out / "checkpoints" / "model_0000020.pth").is_file()
    assert ranks[0].returncode == 2
    assert "another process of this run stopped or stopped answering" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert not (out / "summary.json").exists()


def _killed_after_first_checkpoint(synth_dir: Path, out: Path) -> None:
    """Both ranks SIGKILLed by a planted fault at their 25th step: past the checkpoint at 20, before the next."""
    ranks = _start_ranks(synth_dir, out, {}, {0: ("step", 25), 1: ("step", 25)})
    for process in ranks:
        process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL
    assert (out / "checkpoints" / "model_0000020.pth").is_file() and not (out / "summary.json").exists()


@pytest.mark.slow
def test_two_processes_killed_and_resumed_end_with_the_weights_of_an_uninterrupted_run(
    synth_dir: Path, tmp_path: Path
) -> None:
    reference = _train(synth_dir, tmp_path / "reference", [LONG_RUN, *SPARSE_OUTPUT], "--nproc", "2")
    assert reference.returncode == 0, reference.stderr
    _killed_after_first_checkpoint(synth_dir, tmp_path / "killed")
    resumed = _scratchdet("train", "--resume", str(tmp_path / "killed"), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    ours, theirs = _final_state(tmp_path / "killed"), _final_state(tmp_path / "reference")
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in theirs["model"])  # bitwise
    assert ours["counts"] == theirs["counts"]


@pytest.mark.slow
def test_a_run_of_two_processes_resumes_in_one(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _killed_after_first_checkpoint(synth_dir, out)
    resumed = _scratchdet("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming with 1 processes a run saved by 2" in resumed.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iteration"] == 200 and summary["counts"]["images"] == 800


def test_two_process_pretraining_matches_one(synth_dir: Path, tmp_path: Path) -> None:
    from scratchdet.data.synthetic import SynthSpec, generate

    data = tmp_path / "data"
    generate(data, SynthSpec(train_images=0, val_images=0, classification_train_per_class=4,
                             classification_val_per_class=2), workers=2, quiet=True)  # fmt: skip
    overrides = [*tiny_training_overrides(synth_dir), f"pretrain.root={data / 'classification'}",
                 "pretrain.image_size=32", "pretrain.epochs=2", "pretrain.images_per_batch=8", "pretrain.num_workers=0",
                 "pretrain.warmup_epochs=0.5", "pretrain.log_period=1"]  # fmt: skip
    runs = {}
    for name, launch in (("one", []), ("two", ["--nproc", "2"])):
        result = _scratchdet("pretrain", "demo/mask_rcnn", *overrides, "--out", str(tmp_path / name), *launch)
        assert result.returncode == 0, result.stderr
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert runs["one"]["counts"] == runs["two"]["counts"]
    assert runs["one"]["final"] == runs["two"]["final"]  # top-1/top-5 over every val image, counted once
    one, two = (torch.load(tmp_path / n / "backbone.pth", weights_only=True)["model"] for n in ("one", "two"))
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    assert worst <= WEIGHT_TOLERANCE


@pytest.mark.slow
def test_syncbn_in_two_processes_trains_and_detects_as_batch_norm_in_one(synth_dir: Path, tmp_path: Path) -> None:
    """SyncBN's statistics over 2 processes x 2 images are batch norm's over 4 images in one: the same weights and
    running statistics, and the same saved detections (boxes, scores, categories, image by image). Compared at
    iteration 3: from there on, float-level differences of the two sums reorder proposals whose scores nearly tie,
    and the RoIs sampled from them (measured in portable arithmetic, largest difference at iterations 2 to 5:
    3.6e-7, 8.9e-7, 2.0e-5, 6e-2; for one batch at iteration 3 the gradients of 4 images in one call and the mean
    of 2 + 2 agree to 9e-7 of their largest, so the split itself adds nothing). How far the two sums drift depends on
    the CPU's kernels, so both runs compute portably (`_scratchdet`): the same numbers on every machine."""
    checkpoints = {}
    for name, launch in (("one", []), ("two", ["--nproc", "2"])):
        result = _train(synth_dir, tmp_path / name, [SIX_ITERATIONS, "model.norm=syncbn", "output.checkpoint_period=3"],
                        *launch)  # fmt: skip
        assert result.returncode == 0, result.stderr
        checkpoints[name] = tmp_path / name / "checkpoints" / "model_0000003.pth"
        scored = _scratchdet("eval", str(checkpoints[name]), "--detections", str(tmp_path / f"{name}.json"))
        assert scored.returncode == 0, scored.stderr
    one, two = (torch.load(checkpoints[name], weights_only=True)["model"] for name in ("one", "two"))
    worst = max((one[k].float() - two[k].float()).abs().max().item() for k in one)  # running statistics included
    print(f"largest weight or statistic difference, SyncBN 1 vs 2 processes: {worst:.2e}")
    assert worst <= WEIGHT_TOLERANCE
    ours, theirs = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("two", "one"))
    assert len(theirs) > 0 and len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        assert (mine["image_id"], mine["category_id"]) == (reference["image_id"], reference["category_id"])
        assert mine["score"] == pytest.approx(reference["score"], abs=1e-4)
        assert mine["bbox"] == pytest.approx(reference["bbox"], abs=1e-2)


def test_when_a_launched_process_dies_the_launcher_says_how_to_resume(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    planted = {
        "SCRATCHDET_PLANT": "step:3",
        "PYTHONPATH": os.pathsep.join([str(PLANTED), os.environ.get("PYTHONPATH", "")]),
    }
    died = _scratchdet("train", "demo/mask_rcnn", *tiny_training_overrides(synth_dir), *EQUAL_SPLIT, SIX_ITERATIONS,
                       "--out", str(out), "--nproc", "2", env=planted)  # fmt: skip
    assert died.returncode != 0 and "Traceback" not in died.stderr
    assert f"continue it with `scratchdet train --resume {out} --nproc 2`" in died.stderr, died.stderr[-2000:]


LEAVE = """
import os, sys, time
import torch.distributed as dist
from scratchdet.engine import distributed
dist.init_process_group("gloo")
if distributed.rank() == 0:
    time.sleep(2)  # still writing its checkpoint, say
arrived = time.time()
distributed.shutdown(together=True)
print(arrived, time.time())
"""


def test_a_process_that_ends_with_its_peers_leaves_the_group_only_when_they_all_have_arrived() -> None:
    # Leaving while a peer still used the connections aborted that peer ("terminate called without an active
    # exception") in a real 2-process study paused with --stop-at.
    env = {**os.environ, **PORTABLE, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    command = [sys.executable, "-c", LEAVE]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(rank)}, **pipes) for rank in (0, 1)]
    outputs = [process.communicate(timeout=120) for process in ranks]
    assert [process.returncode for process in ranks] == [0, 0], outputs
    (zero_arrived, _), (_, one_left) = (map(float, out.split()) for out, _ in outputs)
    assert one_left >= zero_arrived
