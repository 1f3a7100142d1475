"""The local executor's start order (its processes run in test_runner.py and test_study_faults.py)."""

from __future__ import annotations

from pathlib import Path

from scratchdet.study import local
from scratchdet.study.jobs import job_graph, runs_of
from scratchdet.study.runner import plan_study
from tests.study.test_slurm_plan import write_spec


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
