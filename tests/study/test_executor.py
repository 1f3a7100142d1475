"""Executors behind one interface: a new one is a class and a registration; each one's options are its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from scratchdet.cli import main
from scratchdet.study import executor
from scratchdet.study.jobs import JobGraph, JobState
from scratchdet.study.spec import StudyPlan
from tests.study.test_slurm_plan import write_spec


class ToyExecutor:
    """Remembers what it was given; its jobs "go on elsewhere" (no waiting), as Slurm's without --wait."""

    retry_hint = "ask the toy"
    seen: ClassVar[dict[str, Any]] = {}

    def __init__(self, colour: str) -> None:
        self.colour = colour

    @classmethod
    def from_options(cls, colour: str = "grey") -> ToyExecutor:
        return cls(colour)

    @staticmethod
    def live_jobs(study_dir: Path) -> list[str]:
        return []

    def check(self, plan: StudyPlan, graph: JobGraph, study_dir: Path) -> None:
        ToyExecutor.seen["checked"] = sorted(graph)

    def describe(self, graph: JobGraph, study_dir: Path, estimates: dict[str, float], source: str) -> str:
        return f"toy plan in {self.colour}: {len(graph)} jobs"

    def submit(self, graph: JobGraph, study_dir: Path) -> None:
        ToyExecutor.seen["configs written"] = all(job.config_file.is_file() for job in graph.values())

    def wait(self, graph: JobGraph, study_dir: Path) -> dict[str, JobState] | None:
        return None


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    entry = executor.Registration(
        "toy", f"{__name__}:ToyExecutor", "a test's", (executor.Option("--colour", help="its colour"),)
    )
    monkeypatch.setattr(executor, "EXECUTORS", {**executor.EXECUTORS, "toy": entry})
    monkeypatch.setattr("scratchdet.cli.EXECUTORS", executor.EXECUTORS)
    ToyExecutor.seen.clear()


@pytest.mark.usefixtures("toy")
def test_a_registered_executor_gets_its_options_the_plan_and_the_job_graph(
    tmp_path: Path, synth_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    axes = "axes: {init: [scratch], norm: [gn], schedule: [1x]}"
    spec = write_spec(tmp_path, synth_dir, f"base: demo/mask_rcnn\noverrides: [solver.base_epochs=null]\n{axes}")
    study = ["study", str(spec), "--out", str(tmp_path / "study"), "--executor", "toy", "--colour", "red"]
    assert main([*study, "--dry-run", "--seconds-per-iteration", "1"]) == 0
    assert "toy plan in red: 1 jobs" in capsys.readouterr().out
    assert main(study) == 0
    assert ToyExecutor.seen == {"checked": ["arms/scratch_gn_1x_seed0"], "configs written": True}
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert re.search(r"--executor toy:\n  --colour COLOUR +its colour", capsys.readouterr().out)


@pytest.mark.usefixtures("toy")
@pytest.mark.parametrize(
    ("given", "message"),
    [(["--signal-delay", "30"], "--signal-delay needs --executor slurm"),
     (["--wait", "--max-requeues", "2"], "--max-requeues, --wait need --executor slurm"),
     (["--executor", "slurm", "--jobs", "2"], "--jobs needs --executor local"),
     (["--max-requeues", "0"], "--max-requeues needs --executor slurm"),  # 0 is given, not a default
     (["--executor", "slurm", "--colour", "red"], "--colour needs --executor toy")],
)  # fmt: skip
def test_an_option_of_another_executor_is_refused(
    given: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["study", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "study"), *given]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_an_executor_gets_the_options_given_zero_included() -> None:
    from scratchdet.cli import _executor, build_parser

    arguments = ["study", "spec.yaml", "--out", "x", "--executor", "slurm", "--max-requeues", "0", "--time", "5"]
    chosen = _executor(build_parser().parse_args(arguments))
    assert chosen.overrides == {"max_requeues": 0, "time": 5}  # type: ignore[attr-defined]
