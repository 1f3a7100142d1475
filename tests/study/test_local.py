"""The local executor's start order (its processes run in test_runner.py and test_study_faults.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchdet.cli import main
from scratchdet.engine.hooks import format_duration
from scratchdet.study import local
from scratchdet.study.jobs import job_graph, runs_of
from scratchdet.study.runner import plan_study
from tests.study.test_slurm_plan import SPEC, write_spec


def test_the_run_heading_the_longest_chain_of_work_starts_first(tmp_path: Path, synth_dir: Path) -> None:
    """Pre-training, then both inits at 1x, 3x and 6x, the shorter ones forked from 6x: pre-training heads the
    longest chain (itself, the pre-trained 6x arm, its 3x fork), so a free slot goes to it before the scratch 6x arm,
    and to either 6x arm before any fork."""
    study = tmp_path / "study"
    graph = job_graph(plan_study(write_spec(tmp_path, synth_dir), study), study)
    runs = {run.name: run for run in (local._Run(parts) for parts in runs_of(graph).values())}
    (pretrain,) = [name for name in runs if name.startswith("pretrain/")]
    length = {name: run.length for name, run in runs.items()}
    fork = {init: max(length[f"arms/{init}_gn_{s}_seed0"] for s in ("1x", "3x")) for init in ("scratch", "pretrained")}
    chain = {name: length[name] for name in runs}  # the forks: nothing waits for them
    for init in ("scratch", "pretrained"):
        chain[f"arms/{init}_gn_6x_seed0"] += fork[init]
    chain[pretrain] += chain["arms/pretrained_gn_6x_seed0"]
    ordered = [run.name for run in local.start_order(list(runs.values()), graph)]
    assert ordered == sorted(runs, key=lambda name: (-chain[name], name))
    assert ordered[:3] == [pretrain, "arms/pretrained_gn_6x_seed0", "arms/scratch_gn_6x_seed0"]
    assert {ordered[-2], ordered[-1]} == {"arms/pretrained_gn_1x_seed0", "arms/scratch_gn_1x_seed0"}


def test_the_simulated_wall_time_is_the_sum_on_one_slot_and_the_longest_chain_on_many(
    tmp_path: Path, synth_dir: Path
) -> None:
    """Each run taking one second an iteration plus 5 s of start-up: one slot runs them one after the other; with a
    slot for each, the study ends with the longest chain (pre-training, then the pre-trained 6x arm; its forks end
    with their own schedule's length, shorter), and a fork waits for the part of its parent before its fork."""
    study = tmp_path / "study"
    graph = job_graph(plan_study(write_spec(tmp_path, synth_dir), study), study)
    runs = {run.name: run for run in (local._Run(parts) for parts in runs_of(graph).values())}
    seconds = {name: float(run.length) for name, run in runs.items()}
    (pretrain,) = [name for name in runs if name.startswith("pretrain/")]
    assert local.simulated_wall_seconds(graph, 1, seconds, startup=5) == sum(seconds.values()) + 5 * len(runs)
    six = {init: runs[f"arms/{init}_gn_6x_seed0"].length for init in ("scratch", "pretrained")}
    three = runs["arms/pretrained_gn_3x_seed0"]
    fork_ends = seconds[pretrain] + 5 + three.first.start + 5 + three.length + 5  # waits for its parent's part
    longest = max(seconds[pretrain] + 5 + six["pretrained"] + 5, six["scratch"] + 5, fork_ends)
    assert local.simulated_wall_seconds(graph, len(runs), seconds, startup=5) == longest
    assert longest == seconds[pretrain] + six["pretrained"] + 10 > fork_ends
    two = local.simulated_wall_seconds(graph, 2, seconds, startup=5)
    assert longest < two < sum(seconds.values()) + 5 * len(runs)
    slow_fork = {**seconds, three.name: 10.0 * three.length}  # now the fork's chain is the longest
    fork_ends = seconds[pretrain] + 5 + three.first.start + 5 + 10 * three.length + 5
    assert local.simulated_wall_seconds(graph, len(runs), slow_fork, startup=5) == fork_ends


def test_a_local_dry_run_estimates_the_wall_time_for_its_jobs(
    tmp_path: Path, synth_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path, synth_dir, SPEC.partition("resources:")[0])  # one node a job: local
    study = tmp_path / "study"
    graph = job_graph(plan_study(spec, study), study)
    seconds = {run: float(parts[-1].iterations - parts[0].start) for run, parts in runs_of(graph).items()}
    for jobs in (1, len(seconds)):
        command = ["study", str(spec), "--out", str(study), "--dry-run", "--seconds-per-iteration", "1"]
        assert main([*command, "--jobs", str(jobs)]) == 0
        wall = format_duration(local.simulated_wall_seconds(graph, jobs, seconds))
        assert f"with {jobs} run(s) at once (--jobs): {wall}, the longest chain" in capsys.readouterr().out
    assert not study.exists()
