"""`scratchdet study --executor slurm` against a real Slurm: a one-node cluster started on this machine.

One small study (two arms, the shorter forked from the longer, the longer with 2 processes) runs with the local
executor, then through Slurm with a 2-minute time limit: the longer arm's second part reaches its time limit and
is requeued by itself; the forked arm is cancelled with `scancel` mid-run and submitted again by re-running the
study. Both end with the weights of the local (uninterrupted) run, and the reports agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from scratchdet.study.report import build_report
from scratchdet.study.runner import run_study
from tests.conftest import final_weights, tiny_training_overrides
from tests.slurm_cluster import one_node_cluster

pytestmark = pytest.mark.slow

# At 4 images per iteration: 1,440 and 360 iterations; the shorter forks at its first lr step, 240.
LONG, SHORT = "scratch_gn_0.004x_seed0", "scratch_gn_0.001x_seed0"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    if sys.platform != "linux":
        pytest.skip("the test cluster runs Debian's Slurm")
    with one_node_cluster(tmp_path_factory.mktemp("slurm")) as environment:
        yield environment


def write_spec(folder: Path, data: Path) -> Path:
    overrides = [*tiny_training_overrides(data), "solver.base_epochs=null", "eval.max_images=4", "eval.period=120",
                 "output.checkpoint_period=60"]  # fmt: skip
    spec = {
        "base": "demo/mask_rcnn",
        "overrides": overrides,
        "axes": {"init": ["scratch"], "norm": ["gn"], "schedule": ["0.004x", "0.001x"], "seed": [0]},
        "resources": {"jobs": {f"arms/{LONG}": {"processes": 2}}},
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec))
    return folder / "spec.yaml"


def squeue(environment: dict[str, str]) -> str:
    return subprocess.run(["squeue"], env=environment, capture_output=True, text=True, check=True).stdout


def ids(study: Path) -> dict[str, str]:
    return {name: entry["job_id"] for name, entry in json.loads((study / "slurm" / "jobs.json").read_text()).items()}


def wait_until(condition: object, seconds: float, what: str, environment: dict[str, str]) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {seconds:.0f} s; squeue:\n{squeue(environment)}")
        time.sleep(0.5)


def logged_iteration(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return max((json.loads(line)["iteration"] for line in lines if line.strip()), default=0)


def report_text(study: Path) -> str:
    """report.md without its title (the study's folder name), with the study's path left out, and without its last
    section, where the time went (wall-clock times; the local executor's alone)."""
    title, rest = (study / "report" / "report.md").read_text().split("\n", 1)
    assert title == f"# scratchdet study: {study.name}"
    return rest.split("\n## Where the time went\n")[0].replace(str(study), "STUDY")


def test_a_study_on_slurm_requeues_resumes_and_equals_the_local_one(
    cluster: dict[str, str], synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One thread per process under both executors: results are bitwise equal only for equal thread counts.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = write_spec(tmp_path, synth_dir)
    run_study(spec, tmp_path / "local")
    study = tmp_path / "slurm"
    # A 2-minute limit, the warning 30 s before it (Slurm sends it 30 to 90 s after the start): the long arm's
    # second part (1,200 iterations, over 100 s) cannot finish in one allocation; each trains 25 s at least, so 10
    # requeues are plenty.
    command = [sys.executable, "-m", "scratchdet", "study", str(spec), "--out", str(study), "--executor", "slurm",
               "--time", "2", "--signal-delay", "30", "--max-requeues", "10", "--poll", "2"]  # fmt: skip
    environment = {**cluster, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

    submitted = subprocess.run(command, env=environment, capture_output=True, text=True, check=True).stdout
    print(submitted)
    assert submitted.count("new; submitted") == 3, submitted  # the long arm's part up to 240, its rest, the fork
    jobs = ids(study)
    assert set(jobs) == {f"arms/{LONG}@240", f"arms/{LONG}", f"arms/{SHORT}"}

    # The forked arm starts once the part of its parent up to the fork has finished; cancel it mid-run.
    short = study / "arms" / SHORT
    wait_until(lambda: logged_iteration(short) >= 260, 300, "the forked arm running", environment)
    print(squeue(environment))
    while_running = build_report(study).with_name("report.md").read_text()  # while jobs run
    assert f"Unfinished arms (not in the verdicts): {SHORT}, {LONG}" in while_running, while_running
    subprocess.run(["scancel", jobs[f"arms/{SHORT}"]], env=environment, check=True)

    # The long arm reaches its time limit: submitit checkpoints it and requeues the same job (pending until its
    # begin time), until it finishes.
    queue_when_requeued = []
    long_job = jobs[f"arms/{LONG}"]

    def long_arm_ended() -> bool:
        text = squeue(environment)
        if "BeginTime" in text and not queue_when_requeued:
            queue_when_requeued.append(text)
        return all(line.split()[0] != long_job for line in text.splitlines()[1:])

    wait_until(long_arm_ended, 600, "the long arm ending", environment)
    print("".join(queue_when_requeued))
    log = (study / "slurm" / "logs" / f"{jobs[f'arms/{LONG}']}_0_log.out").read_text()  # submitit's info lines
    requeues = [line for line in log.splitlines() if "Requeued job" in line]
    print("\n".join(requeues))
    assert requeues, log[-3000:]
    assert "stopped at iteration" in (study / "arms" / LONG / "console.txt").read_text()
    assert (study / "arms" / LONG / "summary.json").is_file()
    assert not (short / "summary.json").is_file()

    # Re-running the study shows why the forked arm is unfinished and submits it alone again; --wait follows it.
    again = subprocess.run([*command, "--wait"], env=environment, capture_output=True, text=True)
    print(again.stdout, again.stderr)
    assert again.returncode == 0, again.stderr[-3000:]
    cancelled = jobs[f"arms/{SHORT}"]
    assert f"job {cancelled} cancelled unfinished; submitted again" in again.stdout, again.stdout
    assert ids(study)[f"arms/{SHORT}"] != jobs[f"arms/{SHORT}"]
    assert ids(study)[f"arms/{LONG}"] == jobs[f"arms/{LONG}"]

    for arm in (LONG, SHORT):
        on_slurm, here = final_weights(study / "arms" / arm), final_weights(tmp_path / "local" / "arms" / arm)
        assert on_slurm.keys() == here.keys()
        for name in here:
            assert torch.equal(on_slurm[name], here[name]), (arm, name)
    print(report_text(study))
    assert report_text(study) == report_text(tmp_path / "local")


def test_a_job_that_fails_is_reported_with_its_log_and_not_submitted_again(
    cluster: dict[str, str], tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, tmp_path / "no_data")  # every job fails as it builds its dataset
    study = tmp_path / "study"
    command = [sys.executable, "-m", "scratchdet", "study", str(spec), "--out", str(study), "--executor", "slurm",
               "--time", "5", "--poll", "1"]  # fmt: skip
    refused = subprocess.run([*command, "--partition", "nowhere"], env=cluster, capture_output=True, text=True)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert f"sbatch refused arms/{LONG}@240: " in refused.stderr and "nvalid partition" in refused.stderr
    assert not (study / "slurm" / "jobs.json").exists()
    waited = subprocess.run([*command, "--wait"], env=cluster, capture_output=True, text=True)
    print(waited.stdout, waited.stderr)
    assert waited.returncode == 2 and "Traceback" not in waited.stderr
    assert "lacks what these jobs did not finish" in waited.stderr and "--retry-failed" in waited.stderr
    first = ids(study)
    part = first[f"arms/{LONG}@240"]
    # The part of the long arm up to the fork failed; Slurm ended the two jobs that needed it.
    console = study / "arms" / LONG / "console.txt"
    assert f"failed (exit status 2); see {console} and {study}/slurm/logs/{part}_0_log.err" in waited.stdout
    assert "not found" in console.read_text()  # the training's own error, in the log the state names

    again = subprocess.run(command, env=cluster, capture_output=True, text=True, check=True)
    print(again.stdout)
    states = {line.split()[0]: line for line in again.stdout.splitlines() if line.startswith("arms/")}
    assert f"failed (exit status 2); see {console}" in states[f"arms/{LONG}@240"]
    assert states[f"arms/{LONG}"].endswith(f"waiting: needs arms/{LONG}@240")
    assert states[f"arms/{SHORT}"].endswith(f"waiting: needs arms/{LONG}@240")
    assert ids(study) == first and "submitted" not in again.stdout  # nothing submitted again
