from pathlib import Path

from scratchdet.study.findings import all_verdicts
from scratchdet.study.report import build_report
from scratchdet.study.results import read_study
from scratchdet.study.verdicts import Status
from tests.study.fixtures import paper_like_study, write_arm, write_pretraining

FIGURES = ("ap_curves", "accounting", "pretraining_gain", "overfitting")


def test_verdicts_without_saved_evaluations_are_inconclusive_and_say_why(tmp_path: Path) -> None:
    paper_like_study(tmp_path)  # hand-written metrics, no saved detections: the noise is unknown
    verdicts = all_verdicts(read_study(tmp_path))
    assert [v.status for v in verdicts] == [
        Status.INCONCLUSIVE,
        Status.INCONCLUSIVE,
        Status.UNTESTED,
        Status.INCONCLUSIVE,
    ]
    assert (
        "scratch 29.5 (3x) vs pre-trained 30.0 (3x) box AP, "
        "difference -0.5 (interval unknown: saved evaluations missing)" in verdicts[0].evidence
    )
    assert verdicts[1].label == "inconclusive: not converged"  # pre-training's best schedule, 3x, is not flat
    assert (
        "3x gains +6.0 (interval unknown: saved evaluations missing) box AP over 1x (convergence unknown)"
        in verdicts[1].evidence
    )


def test_seeds_are_averaged_in_the_table(tmp_path: Path) -> None:
    from scratchdet.study.report import metrics_table

    for seed, ap in ((0, 20.0), (1, 22.0)):
        write_arm(tmp_path, f"scratch_gn_1x_seed{seed}", init="scratch", schedule="1x", seed=seed, curve=[(300, ap)])
    rows = metrics_table(read_study(tmp_path))
    assert rows[1][:5] == ["scratch", "gn", "1x", "2000", "2"] and rows[1][5] == "21.0 ± 1.4"


def test_report_has_every_figure_and_verdict_and_escapes_names(tmp_path: Path) -> None:
    paper_like_study(tmp_path)
    write_arm(
        tmp_path,
        "<b onmouseover=alert(1)>x",
        init="scratch",
        schedule="1x",
        subset=300,
        train_images=300,
        curve=[(100, 3.0), (300, 9.0)],
    )
    report = build_report(tmp_path)
    text = report.read_text()
    assert text.count("<img src='data:image/png;base64,") == len(FIGURES) + 1  # + less_data: two sizes now
    for name in (*FIGURES, "less_data"):
        assert (tmp_path / "report" / "figures" / f"{name}.png").stat().st_size > 5000
    for number in ("1.", "2.", "3.", "4."):
        assert f"<strong>{number}" in text
    assert "<b onmouseover" not in text and "&lt;b onmouseover=alert(1)&gt;x" in text
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Verdicts" in markdown and "![ap_curves](figures/ap_curves.png)" in markdown


def test_user_strings_are_escaped_in_the_html(tmp_path: Path) -> None:
    study = tmp_path / "<script>alert(1)<"  # the study's name is the folder's, shown as the title
    paper_like_study(study)
    write_arm(study, "scratch_<img src=x onerror=alert(2)>_2x_seed9", init="scratch", schedule="2x",
              curve=[(100, 1.0), (600, 2.0)], final={"AP50": 3.0, "AP75": 1.0})  # fmt: skip
    html_text = build_report(study).with_suffix(".html").read_text()
    assert "<script>alert(1)" not in html_text and "&lt;script&gt;alert(1)" in html_text
    assert "<img src=x" not in html_text


def test_pretraining_runs_and_their_accuracy_are_reported(tmp_path: Path) -> None:
    paper_like_study(tmp_path)
    build_report(tmp_path)
    assert "## Pre-training" not in (tmp_path / "report" / "report.md").read_text()  # a study without one
    write_pretraining(tmp_path, "resnet_narroww32d18_gn", iterations=680, top1=65.14)
    write_pretraining(tmp_path, "resnet_narroww32d18_bn", iterations=100, top1=None)
    html_text = build_report(tmp_path).read_text()
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| pretrain/resnet_narroww32d18_gn | finished | 680 | 43,520 | 65.1 | 85.1 |" in markdown
    assert "| pretrain/resnet_narroww32d18_bn | unfinished | 100 | 6,400 | - | - |" in markdown
    assert "<h2>Pre-training</h2>" in html_text and "<td>65.1</td>" in html_text


def test_a_full_disk_while_writing_the_report_names_the_file_and_says_what_to_do(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A real write to a full disk fails in the file's write or fsync and names no file: the report's writer
    names it, and the command ends in one line instead of a traceback."""
    import errno
    import os

    from scratchdet import storage
    from scratchdet.cli import main

    paper_like_study(tmp_path)

    def no_space(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(storage.os, "fsync", no_space)
    assert main(["report", str(tmp_path)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"error: no space left on device writing {tmp_path / 'report' / 'figures'}")
    assert message.endswith("free disk space, then run the same command again")
    assert not list((tmp_path / "report").rglob("*.tmp"))  # no temporary file left behind


def test_a_damaged_summary_or_record_of_a_study_is_named_not_a_traceback(tmp_path: Path, capsys) -> None:
    from scratchdet.cli import main

    paper_like_study(tmp_path)
    arm = sorted((tmp_path / "arms").iterdir())[0]
    (arm / "summary.json").write_text('{"final": {"bbox": ')
    assert main(["report", str(tmp_path)]) == 2
    message = capsys.readouterr().err
    assert f"{arm / 'summary.json'}: not readable JSON" in message and "Traceback" not in message
    assert f"run `scratchdet train --resume {arm}` to redo the final evaluation" in message
    (arm / "summary.json").write_text("[" * 100_000)
    assert main(["report", str(tmp_path)]) == 2
    assert "not readable JSON (nested too deeply)" in capsys.readouterr().err


def test_a_final_evaluation_on_more_images_is_drawn_apart_from_the_periodic_curve(tmp_path: Path) -> None:
    import yaml

    from scratchdet.study.figures import _split_final

    run = write_arm(tmp_path, "scratch_gn_1x_seed0", init="scratch", schedule="1x",
                    curve=[(100, 5.0), (200, 8.0), (300, 6.0)])  # fmt: skip
    arm = read_study(tmp_path)[0]
    assert not arm.final_on_more_images  # demo/mask_rcnn: every evaluation on the same 200 images
    assert _split_final(arm, arm.curve("bbox")) == (arm.curve("bbox"), [])
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"]["final_all_images"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    arm = read_study(tmp_path)[0]
    assert arm.final_on_more_images
    assert _split_final(arm, arm.curve("bbox")) == ([(100, 5.0), (200, 8.0)], [(300, 6.0)])
