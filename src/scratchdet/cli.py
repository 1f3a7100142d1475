"""The `scratchdet` command: parse arguments, load the config, call the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scratchdet import portable
from scratchdet.errors import ScratchdetError, TrainingPaused
from scratchdet.study.executor import EXECUTORS, Executor, Option

EPILOG = """examples:
  scratchdet data synth --out data/demo                  generate the demo dataset
  scratchdet data check data/demo/annotations/instances_train.json --images data/demo/train
  scratchdet config list                                 packaged presets
  scratchdet config show demo/mask_rcnn solver.base_lr=0.01
  scratchdet model summary demo/mask_rcnn
"""


# ------------------------------------------------------------------------------------------ subcommands


def _config_list(args: argparse.Namespace) -> int:
    from scratchdet.config import load_config, preset_names

    for name in preset_names():
        print(f"{name:<40s} {load_config(name).description}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from scratchdet.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from scratchdet.data.synthetic import SynthSpec, generate, with_difficulty

    if args.kind == "people":
        from scratchdet.data.synthetic_keypoints import generate_keypoints

        # Options of the shape scenes would otherwise be silently ignored: a user would think them applied.
        shape_only = [flag for flag, value in _shape_scene_options(args).items() if value is not None]
        if shape_only:
            raise ScratchdetError(
                f"{', '.join(shape_only)}: options of the shape scenes (--kind shapes); people scenes hold one or "
                "two stick figures of their own sizes, one category (person) and no classification set"
            )
        started = time.perf_counter()
        generate_keypoints(
            args.out,
            args.train_images,
            args.val_images,
            args.image_size,
            args.seed,
            workers=args.workers or os.cpu_count() or 1,
        )
        print(
            f"wrote {args.out} ({args.train_images} + {args.val_images} stick-figure images with 17 keypoints) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        return 0

    given = {
        "classification_train_per_class": args.classification_train_per_class,
        "classification_val_per_class": args.classification_val_per_class,
        "categories": args.categories,
    }
    spec = SynthSpec(
        train_images=args.train_images,
        val_images=args.val_images,
        image_size=args.image_size,
        seed=args.seed,
        **{field: value for field, value in given.items() if value is not None},
    )
    spec = with_difficulty(spec, args.objects, args.radius)
    started = time.perf_counter()
    generate(args.out, spec, workers=args.workers)
    print(
        f"wrote {args.out} ({spec.train_images} + {spec.val_images} scenes, classification set) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def _shape_scene_options(args: argparse.Namespace) -> dict[str, object]:
    """`data synth`'s options that only the shape scenes read, by flag; None where not given."""
    return {
        "--objects": args.objects,
        "--radius": args.radius,
        "--categories": args.categories,
        "--classification-train-per-class": args.classification_train_per_class,
        "--classification-val-per-class": args.classification_val_per_class,
    }


def _data_check(args: argparse.Namespace) -> int:
    from scratchdet.data.check import check_dataset

    limit = {"max_pixels": args.max_pixels} if args.max_pixels else {}
    report = check_dataset(args.annotations, args.images, deep=not args.quick, **limit)
    print(report.format(max_problems=args.max_problems))
    return 0 if report.ok else 1


def _model_summary(args: argparse.Namespace) -> int:
    from scratchdet.assemble import category_count, detector_from_config
    from scratchdet.config import load_config
    from scratchdet.modeling.summary import format_summary

    config = load_config(args.config, args.overrides)
    categories = category_count(config)
    if categories is None:
        path = config.data.path(config.data.train_annotations)
        print(f"note: {path} not found; assuming COCO's 80 categories (set model.num_classes to change)")
    model, report = detector_from_config(config, categories or 80)
    height = max(config.data.min_size)
    width = min(config.data.max_size, round(height * 4 / 3))  # a 4:3 image, COCO's most common shape
    print(
        f"{args.config}: {config.model.arch} {config.model.backbone}-FPN, norm={config.model.norm}, "
        f"box head {config.model.box_head}, init={config.model.init}"
    )
    if report is not None:
        print(report.format())
    print(format_summary(model, height, width))
    return 0


def _start_or_resume(args: argparse.Namespace, run: Callable[..., dict[str, Any]], command: str) -> dict[str, Any]:
    """`CONFIG [overrides] --out DIR` starts a run; `--resume DIR` continues one with its own config."""
    from scratchdet.config import load_config
    from scratchdet.engine import rundir

    if args.resume is not None:
        if args.config or args.overrides or args.out:
            raise ScratchdetError("--resume RUN_DIR takes no config, overrides or --out: the run's own config is used")
        return run(rundir.read_config(args.resume), args.resume, resume=True, stop_at=args.stop_at)
    if not args.config or args.out is None:
        raise ScratchdetError(f"give a config and --out RUN_DIR (or --resume RUN_DIR); see `scratchdet {command} -h`")
    return run(load_config(args.config, args.overrides), args.out, stop_at=args.stop_at)


def _train(args: argparse.Namespace) -> int:
    from scratchdet.engine.detection import train

    summary = _start_or_resume(args, train, "train")
    if not _is_main_process():
        return 0
    for task, metrics in (summary.get("final") or {}).items():
        print(f"{task}: " + "  ".join(f"{name} {value:.2f}" for name, value in metrics.items()))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from scratchdet.engine.pretrain import pretrain

    summary = _start_or_resume(args, pretrain, "pretrain")
    if not _is_main_process():
        return 0
    accuracy = (summary.get("final") or {}).get("classification", {})
    print(f"top-1 {accuracy.get('top1', float('nan')):.2f}  top-5 {accuracy.get('top5', float('nan')):.2f}")
    print(f"backbone: {summary.get('backbone')}  (use it with model.init={summary.get('backbone')})")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from scratchdet.engine.detection import evaluate_saved
    from scratchdet.engine.rundir import setup_logging

    setup_logging(None)
    results = evaluate_saved(args.target, args.overrides, detections=args.detections)
    if not _is_main_process():
        return 0
    for task, metrics in results.items():
        print(f"{task}: " + "  ".join(f"{name} {value:.2f}" for name, value in metrics.items()))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from scratchdet.engine.predict import predict
    from scratchdet.engine.rundir import setup_logging

    setup_logging(None)
    path = predict(args.run_dir, args.images, args.out, args.score_threshold, args.checkpoint)
    print(f"drawn images and {path.name} in {args.out}")
    return 0


def _schedule_show(args: argparse.Namespace) -> int:
    from scratchdet.assemble import schedule_for
    from scratchdet.config import load_config
    from scratchdet.engine.detection import training_set_size

    config = load_config(args.config, args.overrides)
    size: int | None = None
    if config.solver.base_epochs is not None or args.epochs:
        try:
            size = training_set_size(config)
        except ScratchdetError as exc:
            if config.solver.base_epochs is not None:
                raise
            print(f"note: training set not readable ({str(exc).splitlines()[0]}); epochs unknown")
    schedule = schedule_for(config, size)
    images = schedule.total_iterations * schedule.images_per_batch
    rows = [
        (
            "schedule",
            f"{config.solver.schedule}"
            + (
                f" (1x = {config.solver.base_epochs:g} epochs)"
                if config.solver.base_epochs
                else " (1x = 90k iterations at 16 images)"
            ),
        ),
        ("total iterations", f"{schedule.total_iterations:,}"),
        ("lr steps (x0.1)", ", ".join(f"{s:,}" for s in schedule.steps)),
        ("base lr", f"{schedule.base_lr:g} ({config.solver.base_lr:g} at 16 images, linear scaling)"),
        ("warm-up", f"{schedule.warmup_iters:,} iterations from {schedule.warmup_factor:g} x lr"),
        ("images per iteration", f"{schedule.images_per_batch}"),
        ("training images", f"{size:,}" if size else "not read (--epochs reads it)" if not args.epochs else "unknown"),
        ("epochs", f"{images / size:.1f}" if size else "unknown"),
        ("images seen", f"{images:,}"),
    ]
    for name, value in rows:
        print(f"{name:<22s} {value}")
    return 0


def _weights_inspect(args: argparse.Namespace) -> int:
    from scratchdet.modeling.weights import describe_weight_file

    print(describe_weight_file(args.file))
    if args.config is None:
        return 0
    from scratchdet.assemble import detector_from_config
    from scratchdet.config import SCRATCH_OVERRIDES, load_config
    from scratchdet.modeling.init import load_backbone_weights

    config = load_config(args.config, [*args.overrides, *SCRATCH_OVERRIDES])
    model, _ = detector_from_config(config, 1)
    print(f"how it maps onto the backbone of {args.config}:")
    try:
        print(load_backbone_weights(model, args.file, None, config.data.pixel_mean, config.data.pixel_std).format())
    except ScratchdetError as exc:
        print(exc)
        return 1
    return 0


def _study(args: argparse.Namespace) -> int:
    from scratchdet.study.resources import Resources
    from scratchdet.study.runner import run_study

    resources = Resources(
        gpus=args.gpus_per_arm, nodes=args.nodes_per_arm, processes=args.procs_per_arm, cpus=args.cpus_per_proc
    )
    report = run_study(
        args.spec,
        args.out,
        executor=_executor(args),
        dry_run=args.dry_run,
        resources=resources,
        seconds_per_iteration=args.seconds_per_iteration,
    )
    if report is not None:
        print(f"report: {report}")
    return 0


def _executor(args: argparse.Namespace) -> Executor:
    """The chosen executor, from its own options; another executor's options are refused, not ignored."""
    chosen = EXECUTORS[args.executor]

    def given(option: Option) -> bool:  # an option's default is None (False for a switch); 0 is a value given
        value = getattr(args, option.dest)
        return value is not None and value is not False

    for name, entry in EXECUTORS.items():
        flags = [option.flag for option in entry.options if given(option)]
        if name != chosen.name and flags:
            raise ScratchdetError(f"{', '.join(flags)} need{'s' if len(flags) == 1 else ''} --executor {name}")
    return chosen.load().from_options(**{o.dest: getattr(args, o.dest) for o in chosen.options if given(o)})


def _report(args: argparse.Namespace) -> int:
    from scratchdet.study.report import build_report

    if not (args.study_dir / "arms").is_dir():
        raise ScratchdetError(f"{args.study_dir} is not a study directory (no arms/); run `scratchdet study` first")
    print(f"report: {build_report(args.study_dir)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from scratchdet.demo import run_demo

    path = run_demo(
        args.device,
        data=args.data,
        out=args.out,
        jobs=args.jobs,
        objects=args.objects,
        radius=args.radius,
        check_only=args.check_only,
    )
    if path is not None:
        print(f"report: {path}")
    return 0


# -------------------------------------------------------------------------------------------- parser


def _difficulty_arguments(parser: argparse.ArgumentParser, whose: str) -> None:
    """--objects and --radius: the generated scenes' difficulty, `whose` defaults (SynthSpec's) when not given."""
    from scratchdet.data import DEFAULT_OBJECTS, DEFAULT_RADIUS

    parser.add_argument(
        "--objects",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help=f"objects per scene, drawn uniformly between MIN and MAX (default: {whose}{DEFAULT_OBJECTS[0]} "
        f"{DEFAULT_OBJECTS[1]})",
    )
    parser.add_argument(
        "--radius",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="object radius as a fraction of the image size, log-uniform between MIN and MAX; fewer, larger objects "
        f"make easier scenes (default: {whose}{DEFAULT_RADIUS[0]:g} {DEFAULT_RADIUS[1]:g})",
    )


def _check_before_launch(args: argparse.Namespace) -> None:
    """Refuse a bad config or batch split here, once, rather than in every launched process."""
    from scratchdet.config import load_config
    from scratchdet.engine import rundir
    from scratchdet.engine.distributed import check_batch_split

    if args.nproc < 1:
        raise ScratchdetError(f"--nproc {args.nproc}: give a number of processes of at least 1")
    if getattr(args, "resume", None) is not None:
        config = rundir.read_config(args.resume)
    elif getattr(args, "config", None):
        config = load_config(args.config, args.overrides)
    else:
        return
    check_batch_split(
        config.pretrain.images_per_batch if args.handler is _pretrain else config.solver.images_per_batch, args.nproc
    )


def _is_main_process() -> bool:
    from scratchdet.engine.distributed import is_main

    return is_main()


def _add_run_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--out", type=Path, help="run directory to create")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help=f"continue the {what} in RUN_DIR")
    parser.add_argument(
        "--stop-at",
        type=int,
        metavar="ITER",
        help="pause after ITER iterations with a checkpoint there (no final evaluation); --resume continues. "
        "SIGTERM pauses the same way, at the end of a step",
    )
    _add_nproc_argument(parser)


def _add_study_resource_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "resources of every job (over the spec's `resources:`; its per-job patterns still apply)"
    )
    group.add_argument("--gpus-per-arm", type=int, metavar="G", help="GPUs of a job in all, one process per GPU")
    group.add_argument("--nodes-per-arm", type=int, metavar="N", help="nodes a job spreads over (Slurm only)")
    group.add_argument(
        "--procs-per-arm", type=int, metavar="P", help="processes of a job (torch.distributed; default: G, or 1)"
    )
    group.add_argument("--cpus-per-proc", type=int, metavar="C", help="CPUs per process (Slurm: --cpus-per-task)")


def _add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """--executor, and each registered executor's options under a heading of its own (study/executor.py)."""
    parser.add_argument(
        "--executor",
        choices=tuple(EXECUTORS),
        default="local",
        help="; ".join(f"{name}: {entry.help}" for name, entry in EXECUTORS.items()) + " (default: local)",
    )
    for name, entry in EXECUTORS.items():
        group = parser.add_argument_group(f"--executor {name}", entry.heading or None)
        for option in entry.options:
            group.add_argument(option.flag, **option.kwargs)


def _add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="run as N local processes under torchrun (DDP; gloo on CPU, NCCL on GPUs); the global batch "
        "(solver.images_per_batch) is shared between them. For several nodes call torchrun yourself: "
        "torchrun --nnodes ... -m scratchdet train ...",
    )


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a packaged preset (see `scratchdet config list`) or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. solver.base_lr=0.01")


def _subparsers(parser: argparse.ArgumentParser, title: str) -> argparse._SubParsersAction:
    return parser.add_subparsers(title=title, dest=f"{parser.prog.split()[-1]}_command", required=True)


def _command(
    group: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    help_text: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    from scratchdet.data import DEFAULT_CLASSIFICATION_PER_CLASS, DETECTION_SHAPES
    from scratchdet.demo import DEMO_GPU_JOBS

    parser = argparse.ArgumentParser(
        prog="scratchdet",
        description="Train detectors from random initialization or from pre-training under matched conditions, "
        "and measure what pre-training buys (He, Girshick, Dollar: Rethinking ImageNet Pre-training).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--portable",
        action="store_true",
        help="CPU arithmetic that gives the same numbers to the last digit on any x86-64 CPU with AVX2: PyTorch's "
        "AVX2 kernels, MKL's COMPATIBLE branch, convolutions without oneDNN, one thread (slower; also set by "
        "SCRATCHDET_PORTABLE=1, and passed on to every process a command starts). Without it a run uses this "
        "CPU's fastest kernels, and its numbers differ in the last digits from another CPU's, which training "
        "grows into different AP",
    )
    commands = _subparsers(parser, "commands")

    config = commands.add_parser("config", help="list, resolve and print configurations")
    config_commands = _subparsers(config, "config commands")
    _command(config_commands, "list", _config_list, "list the packaged presets")
    _add_config_arguments(_command(config_commands, "show", _config_show, "print a resolved config as YAML"))

    data = commands.add_parser("data", help="generate or check datasets")
    data_commands = _subparsers(data, "data commands")
    synth = _command(
        data_commands,
        "synth",
        _data_synth,
        "generate a COCO-format shapes dataset and an ImageFolder classification set",
    )
    synth.add_argument("--out", type=Path, required=True, help="output folder")
    synth.add_argument(
        "--kind",
        choices=["shapes", "people"],
        default="shapes",
        help="shapes: cluttered shape scenes (boxes, masks) and a classification set; people: stick figures "
        "with COCO's 17 person keypoints (for keypoint_rcnn, e.g. demo/keypoint_rcnn)",
    )
    synth.add_argument("--train-images", type=int, default=2000)
    synth.add_argument("--val-images", type=int, default=300)
    synth.add_argument(
        "--image-size", type=int, default=128, help="longer side in pixels (>=128 fills COCO's 'large' bucket)"
    )
    # Options of the shape scenes default to None (not given), so that --kind people can refuse them.
    synth.add_argument(
        "--classification-train-per-class",
        type=int,
        help="images per shape in the classification set's train split "
        f"(default: {DEFAULT_CLASSIFICATION_PER_CLASS[0]})",
    )
    synth.add_argument(
        "--classification-val-per-class",
        type=int,
        help=f"images per shape in its val split (default: {DEFAULT_CLASSIFICATION_PER_CLASS[1]})",
    )
    _difficulty_arguments(synth, "")
    synth.add_argument(
        "--categories",
        type=int,
        help=f"detection categories: the first N of {', '.join(DETECTION_SHAPES)} (default: {len(DETECTION_SHAPES)})",
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    check = _command(
        data_commands, "check", _data_check, "summarize a COCO instances file and list every problem (exit 1 on errors)"
    )
    check.add_argument("annotations", type=Path, help="COCO instances JSON")
    check.add_argument("--images", type=Path, required=True, help="folder holding the images")
    check.add_argument("--quick", action="store_true", help="read image headers only (misses truncated files)")
    check.add_argument("--max-problems", type=int, default=200, help="problems to print at most")
    check.add_argument(
        "--max-pixels",
        type=int,
        help="decode images of at most this many pixels; a larger one is an error, not decoded (default: 64000000)",
    )

    train = _command(commands, "train", _train, "train a detector; --resume continues a run exactly")
    train.add_argument("config", nargs="?", help="a packaged preset or a YAML file")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. solver.schedule=2x")
    _add_run_arguments(train, "run")

    pretrain = _command(
        commands,
        "pretrain",
        _pretrain,
        "pre-train the configured detector's backbone as a classifier (pretrain.* settings); writes backbone.pth",
    )
    pretrain.add_argument("config", nargs="?", help="a detection preset or YAML file (its model and pretrain sections)")
    pretrain.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. pretrain.epochs=10")
    _add_run_arguments(pretrain, "pre-training")

    evaluate = _command(commands, "eval", _eval, "COCO box/mask AP of a run's newest checkpoint or a checkpoint")
    evaluate.add_argument("target", type=Path, metavar="RUN_DIR_OR_CHECKPOINT")
    evaluate.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. data.val_annotations=other.json data.val_images=other/"
    )
    evaluate.add_argument(
        "--detections", type=Path, metavar="FILE", help="also write the detections there (COCO results JSON)"
    )
    _add_nproc_argument(evaluate)

    run_predict = _command(
        commands, "predict", _predict, "draw a trained run's detections on images, and save them as COCO results"
    )
    run_predict.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a training run (or a study's arm)")
    run_predict.add_argument("images", type=Path, nargs="+", metavar="IMAGE", help="image files or folders of them")
    run_predict.add_argument("--out", type=Path, required=True, help="folder for the drawn images and predictions.json")
    run_predict.add_argument(
        "--score-threshold",
        type=float,
        default=0.5,
        help="keep detections at or above this score (default: %(default)s)",
    )
    run_predict.add_argument(
        "--checkpoint", type=int, metavar="ITER", help="that iteration's checkpoint (default: newest)"
    )

    schedule = commands.add_parser("schedule", help="inspect schedules")
    schedule_commands = _subparsers(schedule, "schedule commands")
    show = _command(schedule_commands, "show", _schedule_show, "iterations, lr steps, warm-up and epochs of a config")
    _add_config_arguments(show)
    show.add_argument(
        "--epochs",
        action="store_true",
        help="an iteration-based schedule (solver.base_epochs: null) "
        "needs no training set; read it anyway to show how many epochs the run makes",
    )

    study_help = "run the paper's comparison (scratch vs pre-trained arms) on a dataset and write a report"
    study = _command(commands, "study", _study, study_help)
    study.add_argument("spec", type=Path, help="study spec YAML (a base config and axes; see configs/demo/study.yaml)")
    study.add_argument("--out", type=Path, required=True, help="study directory (re-run to resume)")
    study.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan with a time estimate (measured here, or from --seconds-per-iteration); with "
        "--executor slurm also each job's sbatch script and the plan's GPU-hours",
    )
    study.add_argument(
        "--seconds-per-iteration",
        type=float,
        metavar="S",
        help="for --dry-run: a job's seconds per iteration where it will run (default: measured on this machine)",
    )
    _add_study_resource_arguments(study)
    _add_executor_arguments(study)
    report = _command(commands, "report", _report, "rebuild a study's report from its run directories")
    report.add_argument("study_dir", type=Path)

    weights = commands.add_parser("weights", help="inspect weight files")
    weights_commands = _subparsers(weights, "weights commands")
    inspect = _command(
        weights_commands,
        "inspect",
        _weights_inspect,
        "what a .pth/.pkl weight file holds and, with --config, how it maps onto that backbone",
    )
    inspect.add_argument("file", type=Path)
    inspect.add_argument("--config", help="a preset or YAML file whose backbone to map the file onto")
    inspect.add_argument("overrides", nargs="*", metavar="key=value")

    model = commands.add_parser("model", help="inspect models")
    model_commands = _subparsers(model, "model commands")
    _add_config_arguments(
        _command(
            model_commands,
            "summary",
            _model_summary,
            "parameters per stage, norm layers, and FLOPs of the configured model",
        )
    )

    demo = _command(commands, "demo", _demo, "the whole demo: generated data, pre-training, the study and its report")
    demo.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (default): the GPU demo when PyTorch sees a CUDA device (configs/demo/study_gpu.yaml: 1x = 12 "
        "epochs, schedules to 12x, a cost-matched scratch arm, two reduced training sets, two or more seeds; sized "
        "for 10 minutes on one H100/H200), else the CPU demo (configs/demo/study.yaml: about 10 minutes on 2 cores)",
    )
    demo.add_argument(
        "--data",
        type=Path,
        help="where the generated data goes (default: data/demo, GPU: data/demo_gpu; with other scenes than the "
        "demo's, --objects/--radius, a folder beside it named after them, e.g. data/demo_objects1-3_radius0.25-0.45)",
    )
    demo.add_argument(
        "--out",
        type=Path,
        help="study directory; run again to resume (default: runs/demo, GPU: runs/demo_gpu, or named after "
        "--objects/--radius like the data)",
    )
    demo.add_argument(
        "--jobs",
        type=int,
        help="arms trained at once (default: 2 on a CPU, each on its share of the cores; on a GPU, "
        f"{DEMO_GPU_JOBS} sharing it through CUDA MPS, two cores each, or 1 where MPS is not available)",
    )
    _difficulty_arguments(demo, "the demo's, ")
    demo.add_argument("--check-only", action="store_true", help="only generate and check the data")
    return parser


def _after_a_full_disk(args: argparse.Namespace) -> str:
    """What is kept and what to run once space is freed, for the command that ran out of it."""
    from scratchdet.engine import rundir

    run_dir = getattr(args, "resume", None) or getattr(args, "out", None)
    command = getattr(args, "scratchdet_command", "")
    if command in ("train", "pretrain") and run_dir is not None:
        saved = rundir.checkpointer(run_dir).saved()
        kept = f"its newest checkpoint, {saved[-1].name}," if saved else "no checkpoint yet"
        return (
            f"the run keeps {kept} and what it wrote before. Free disk space, then continue with "
            f"`scratchdet {command} --resume {run_dir}`"
        )
    if command in ("study", "demo"):
        return "finished arms and the checkpoints of the others are kept. Free disk space, then run it again"
    return "free disk space, then run the same command again"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    together = False  # whether every process of a distributed run ends the same way (see distributed.shutdown)
    try:
        if args.portable or portable.requested(os.environ):
            portable.enable()  # before any command touches torch; the processes it starts inherit it
        if getattr(args, "nproc", None) is not None:
            from scratchdet.engine.distributed import launch_local, strip_option

            _check_before_launch(args)
            return launch_local(args.nproc, strip_option(sys.argv[1:] if argv is None else argv, "--nproc"))
        if hasattr(args, "nproc"):  # a command that may run as one of several processes
            from scratchdet.engine.distributed import init_from_environment

            init_from_environment()
        code = int(args.handler(args))
        together = True
        return code
    except TrainingPaused as exc:
        together = True
        if _is_main_process():
            print(str(exc).replace("RUN_DIR", str(getattr(args, "resume", None) or args.out)), file=sys.stderr)
        return exc.exit_code
    except ScratchdetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(
            f"error: no space left on device writing {exc.filename or 'a file'}; {_after_a_full_disk(args)}",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        from scratchdet.engine.distributed import shutdown

        shutdown(together=together)
