"""The Slurm executor's plan, without a cluster: resources, the job graph, the commands a node runs, the states a
re-run shows and what it submits again (Slurm's answers stubbed), the dry run. tests/study/test_slurm.py runs it
against a real Slurm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchdet.errors import ScratchdetError
from scratchdet.study import slurm
from scratchdet.study.jobs import JobGraph, job_graph
from scratchdet.study.resources import Resources, ResourceSpec, resources_for
from scratchdet.study.runner import plan_study, run_study
from scratchdet.study.slurm import SlurmExecutor
from scratchdet.study.slurm_node import task_of, training_command
from scratchdet.study.slurm_plan import SlurmSettings, outcome_path, signal_problem

SPEC = """
base: demo/mask_rcnn
overrides: [solver.base_epochs=null, solver.images_per_batch=16]
axes:
  init: [scratch, pretrained]
  norm: [gn]
  schedule: [1x, 3x, 6x]
  seed: [0]
pretrain: {epochs: 5, root: CLASSIFICATION}
resources:
  gpus: 8
  cpus: 10
  jobs: {"arms/*_6x_*": {gpus: 16, nodes: 2}}
"""


def write_spec(folder: Path, synth_dir: Path, spec: str = SPEC) -> Path:
    (folder / "spec.yaml").write_text(spec.replace("CLASSIFICATION", str(synth_dir / "classification")))
    return folder / "spec.yaml"


def graph(tmp_path: Path, synth_dir: Path) -> JobGraph:
    study = tmp_path / "study"
    return job_graph(plan_study(write_spec(tmp_path, synth_dir), study), study)


def test_resources_come_from_defaults_spec_flags_then_the_first_matching_pattern() -> None:
    spec = ResourceSpec(gpus=8, jobs={"arms/*_6x_*": Resources(gpus=16, nodes=2), "arms/*": Resources(gpus=4)})
    assert resources_for("arms/a_1x_seed0", ResourceSpec(), Resources(), 16).describe() == "1 process on 1 node"
    six = resources_for("arms/a_6x_seed0", spec, Resources(), 16)
    assert (six.processes, six.nodes, six.gpus, six.processes_per_node, six.gpus_per_node) == (16, 2, 16, 8, 8)
    assert resources_for("arms/a_1x_seed0", spec, Resources(), 16).gpus == 4  # the first match wins
    assert resources_for("pretrain/p", spec, Resources(gpus=2), 16).gpus == 2  # a flag over the spec's default
    assert resources_for("arms/a_6x_seed0", spec, Resources(gpus=2), 16).gpus == 16  # the pattern over the flag


@pytest.mark.parametrize(
    ("settings", "message"),
    [(Resources(gpus=8, processes=4), "4 processes for 8 GPUs"), (Resources(gpus=6, nodes=4), "spread evenly"),
     (Resources(processes=3), "16 images per batch cannot be shared by 3 processes")],
)  # fmt: skip
def test_inconsistent_resources_are_refused_with_the_job_named(settings: Resources, message: str) -> None:
    with pytest.raises(ScratchdetError, match=r"resources of arms/x: .*" + message):
        resources_for("arms/x", ResourceSpec(), settings, 16)


def test_a_fork_parent_is_split_at_its_fork_iterations_and_jobs_come_in_dependency_order(
    tmp_path: Path, synth_dir: Path
) -> None:
    jobs = graph(tmp_path, synth_dir)
    six, pretrained = "arms/scratch_gn_6x_seed0", "pretrain/resnet_narroww32d18_gn"
    assert jobs[f"{six}@60000"].needs == [] and jobs[f"{six}@60000"].stop_at == 60_000
    assert jobs[f"{six}@210000"].needs == [f"{six}@60000"]
    assert jobs[six].needs == [f"{six}@210000"] and jobs[six].stop_at is None
    assert jobs["arms/scratch_gn_1x_seed0"].needs == [f"{six}@60000"]
    assert jobs["arms/scratch_gn_3x_seed0"].needs == [f"{six}@210000"]
    assert jobs["arms/pretrained_gn_1x_seed0"].needs == [pretrained, "arms/pretrained_gn_6x_seed0@60000"]
    assert jobs["arms/pretrained_gn_6x_seed0@60000"].needs == [pretrained]
    order = list(jobs)
    for name, job in jobs.items():
        assert all(order.index(need) < order.index(name) for need in job.needs), name
    assert jobs[six].resources.nodes == 2 and jobs["arms/scratch_gn_1x_seed0"].resources.gpus == 8


def test_the_command_a_node_runs_on_one_node_and_on_several(tmp_path: Path, synth_dir: Path) -> None:
    jobs = graph(tmp_path, synth_dir)
    one = task_of(jobs["arms/scratch_gn_1x_seed0"], tmp_path / "outcome.json")
    command = training_command(one, 0, ["n1"], "77")
    assert command[1:] == ["-m", "scratchdet", "train", "--resume", one.run_dir, "--nproc", "8"]
    part = task_of(jobs["arms/scratch_gn_6x_seed0@60000"], tmp_path / "outcome.json")
    command = training_command(part, 1, ["n1", "n2"], "77")
    assert command[1:9] == ["-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=8", "--node-rank=1",
                            "--master-addr=n1", "--master-port=20077", "--module"]  # fmt: skip
    assert command[9:] == ["scratchdet", "train", "--resume", part.run_dir, "--stop-at", "60000"]


def test_a_rerun_submits_what_ended_unfinished_but_not_what_failed_for_its_own_reason(
    tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = graph(tmp_path, synth_dir)
    study = tmp_path / "study"
    names = list(jobs)
    record = {name: {"job_id": str(100 + i)} for i, name in enumerate(names)}
    failed, cancelled, queued = "pretrain/resnet_narroww32d18_gn", "arms/scratch_gn_1x_seed0", names[-1]
    outcome = outcome_path(study, failed)
    outcome.parent.mkdir(parents=True)
    outcome.write_text(json.dumps({"job_id": record[failed]["job_id"], "state": "failed", "exit": 1,
                                   "console": "C/console.txt"}))  # fmt: skip
    live = {record[name]["job_id"]: ("RUNNING", "None") for name in names if name.startswith("arms/scratch_gn_6x")}
    live[record[queued]["job_id"]] = ("PENDING", "Dependency")
    monkeypatch.setattr(slurm, "queue", lambda ids: live)
    monkeypatch.setattr(slurm, "_ended_state", lambda job_id: "CANCELLED")
    states = slurm.job_states(jobs, study, record, retry_failed=False)
    assert states[failed].failed and not states[failed].submit
    assert f"failed (exit status 1); see C/console.txt and {study}/slurm/logs/" in states[failed].label
    assert states[cancelled].submit
    assert states[cancelled].label == f"job {record[cancelled]['job_id']} cancelled unfinished"
    assert states["arms/scratch_gn_6x_seed0"].live and states["arms/scratch_gn_6x_seed0"].label.startswith("running")
    assert states[queued].label == "queued (Dependency)" and not states[queued].submit
    waiting = states["arms/pretrained_gn_6x_seed0@60000"]  # needs the failed pre-training
    assert not waiting.submit and waiting.label == f"waiting: needs {failed}"
    assert states["arms/pretrained_gn_6x_seed0@210000"].label == "waiting: needs arms/pretrained_gn_6x_seed0@60000"
    again = slurm.job_states(jobs, study, record, retry_failed=True)
    assert again[failed].submit and again["arms/pretrained_gn_6x_seed0@60000"].submit


def test_dry_run_prints_each_job_script_and_the_gpu_hours(
    tmp_path: Path, synth_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_spec(tmp_path, synth_dir, SPEC.replace("[1x, 3x, 6x]", "[1x, 2x]"))
    options = SlurmExecutor({"time": 4320, "partition": "learnfair", "sbatch": {"qos": "high"}})
    run_study(tmp_path / "spec.yaml", tmp_path / "study", dry_run=True, executor=options, seconds_per_iteration=0.5)
    text = capsys.readouterr().out
    assert not (tmp_path / "study").exists()  # a dry run writes nothing
    # Per init, at 16 images: 2x is 180,000 iterations, 1x forks from it at 60,000 and trains to 90,000; and the
    # pre-training; every job on 8 GPUs at the given 0.5 s per iteration.
    pretraining = plan_study(tmp_path / "spec.yaml", tmp_path / "study").pretrainings[0].iterations
    gpu_hours = (2 * (180_000 + 30_000) + pretraining) * 0.5 * 8 / 3600
    assert f"cost of the plan: {gpu_hours:,.2f} GPU-hours, {gpu_hours / 8:,.2f} node-hours (given: 0.5 s/it" in text
    assert "arms/scratch_gn_2x_seed0@60000: iterations 0-60,000, est. 8h20m; 8 processes on 1 node, 8 GPUs" in text
    assert "arms/scratch_gn_2x_seed0: iterations 60,000-180,000, est. 16h40m; 8 processes" in text
    assert "arms/scratch_gn_2x_seed0 outlasts the time limit (4320 min)" not in text  # 16h40m < 72 h
    script = text.split("# ---- arms/scratch_gn_1x_seed0:")[1].split("# ----")[0]
    for line in ("#SBATCH --partition=learnfair", "#SBATCH --time=4320", "#SBATCH --qos=high",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=80", "#SBATCH --signal=USR2@90",
                 "#SBATCH --dependency='afterok:<arms/scratch_gn_2x_seed0@60000>'"):  # fmt: skip
        assert line in script, line
    assert "--resume " + str(tmp_path / "study" / "arms" / "scratch_gn_1x_seed0") + " --nproc 8" in script
    short = SlurmExecutor({"time": 400, "max_requeues": 1})
    run_study(tmp_path / "spec.yaml", tmp_path / "study", dry_run=True, executor=short, seconds_per_iteration=0.5)
    text = capsys.readouterr().out
    assert "arms/scratch_gn_2x_seed0@60000 outlasts the time limit (400 min): requeued about 1 time(s)\n" in text
    more = "requeued about 2 time(s) (more than --max-requeues 1: raise it)"
    assert f"arms/scratch_gn_2x_seed0 outlasts the time limit (400 min): {more}" in text


def test_submitting_needs_a_time_limit(tmp_path: Path, synth_dir: Path) -> None:
    write_spec(tmp_path, synth_dir)
    with pytest.raises(ScratchdetError, match="give the jobs' time limit: --time MINUTES"):
        run_study(tmp_path / "spec.yaml", tmp_path / "study", executor=SlurmExecutor())
    with pytest.raises(ScratchdetError, match="more than one node needs --executor slurm"):
        run_study(tmp_path / "spec.yaml", tmp_path / "other")
    assert SlurmSettings().signal_delay == 90


def test_a_wrong_slurm_setting_names_where_it_was_given(tmp_path: Path, synth_dir: Path) -> None:
    write_spec(tmp_path, synth_dir, SPEC + "slurm: {partitio: learnfair}\n")
    with pytest.raises(ScratchdetError, match=r"Slurm settings: the spec's slurm\.partitio: Extra inputs"):
        run_study(tmp_path / "spec.yaml", tmp_path / "study", dry_run=True, executor=SlurmExecutor())
    write_spec(tmp_path, synth_dir)
    with pytest.raises(ScratchdetError, match="Slurm settings: --time: Input should be greater than or equal to 1"):
        run_study(tmp_path / "spec.yaml", tmp_path / "study", dry_run=True, executor=SlurmExecutor({"time": 0}))


def test_a_warning_that_could_come_before_the_job_has_started_is_refused() -> None:
    # Slurm may send the warning up to 60 s before `time - signal_delay`; a job needs a few seconds to handle it.
    assert signal_problem(SlurmSettings(time=2, signal_delay=30)) == ""
    assert signal_problem(SlurmSettings(time=3)) == ""  # the default 90 s
    assert "give at most 30 s" in signal_problem(SlurmSettings(time=2))
    assert "give 2 minutes or more" in signal_problem(SlurmSettings(time=1, signal_delay=1))
