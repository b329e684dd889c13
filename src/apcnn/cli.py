"""The ``apcnn`` command line. Only this module sees argparse; every command calls library
functions with explicit arguments and turns the project's errors into one clear line."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from . import __version__


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error classes whose message is meant for the user (no traceback).

    Only modules already imported are looked at: an error class whose module was never imported
    cannot have been raised, and importing it here (``apcnn.training`` imports torch) would
    make every failing light command wait seconds for its error line.
    """
    errors: list[type[BaseException]] = [CommandError, FileNotFoundError, ValueError]
    for module, name in [
        ("apcnn.data.errors", "DatasetError"),
        ("apcnn.config", "ConfigError"),
        ("apcnn.checkpoint", "CheckpointError"),
        ("apcnn.training.run", "DistributedRunError"),
    ]:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


# --------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    if args.layer:
        from .layer_demo import format_layer_demo, run_layer_demo

        print(format_layer_demo(run_layer_demo(seed=args.seed)))
        return 0
    from .demo import run_demo

    run_demo(out=Path(args.out), seed=args.seed, quick=args.quick, overwrite=args.overwrite)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return _launch_train(args)
    from .config import TrainConfig, check_data_root, load_config

    # a bad config, key or data.root fails here, before torch is imported (~2 s on 2 cores)
    out = [f"run.out={args.out}"] if args.out else []
    check_data_root(load_config(TrainConfig, args.config, [*args.set, *out]))
    from .engine import train_from_config

    result = train_from_config(
        config_path=args.config, overrides=args.set, out=args.out, resume=args.resume
    )
    if "results_json" in result:  # rank 0: where the results are and what to do next
        print(next_steps(_run_folder(args)))
    return 0


def _run_folder(args: argparse.Namespace) -> Path:
    """The run folder of ``apcnn train``: ``--out``, else ``run.out`` of the config."""
    if args.out:
        return Path(args.out)
    from .config import TrainConfig, load_config

    return Path(load_config(TrainConfig, args.config, args.set).run.out)


def next_steps(run: Path) -> str:
    """Where a finished run's results are and the commands that use them."""
    ckpts = sorted(p.parent.name for p in (run / "checkpoints").glob("*/meta.json"))
    ckpts = [c for c in ckpts if c != "state"]
    best = "MG-CNN" if "MG-CNN" in ckpts else (ckpts[-1] if ckpts else "METHOD")
    ckpt = run / "checkpoints" / best
    return "\n".join(
        [
            f"results: {run} (results.json, train.log; checkpoints: {', '.join(ckpts) or 'none'})",
            "next:",
            f"  apcnn evaluate --checkpoint {ckpt}",
            f"  apcnn predict --checkpoint {ckpt} IMAGE [IMAGE ...]",
            f"  apcnn report {run}",
        ]
    )


def checkpoint_dir(path: str) -> str:
    """``--checkpoint`` as given, or a :class:`CommandError` that lists the checkpoints inside
    when ``path`` is a run folder (a folder without ``meta.json`` that holds checkpoints)."""
    folder = Path(path)
    if not folder.is_dir() or (folder / "meta.json").is_file():
        return path
    found = sorted(
        str(meta.parent)
        for pattern in ("*/meta.json", "checkpoints/*/meta.json")
        for meta in folder.glob(pattern)
        if meta.parent.name != "state"
    )
    if found:
        raise CommandError(
            f"{path} is a run folder, not a checkpoint; pass --checkpoint with one of: "
            + ", ".join(found)
        )
    return path


def _launch_train(args: argparse.Namespace) -> int:
    """``apcnn train --nproc N ...``: the same command in N processes under torchrun."""
    import os

    from .distributed import launch

    if args.nproc < 1:
        raise CommandError(f"--nproc must be >= 1, got {args.nproc}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CommandError("--nproc given inside a torchrun job; drop it (torchrun started us)")
    argv = ["--debug"] if args.debug else []
    argv += ["train", "-c", args.config]
    for item in args.set:
        argv += ["--set", item]
    if args.out:
        argv += ["--out", args.out]
    if args.resume:
        argv.append("--resume")
    return launch(
        args.nproc,
        argv,
        nnodes=args.nnodes,
        rdzv_endpoint=args.rdzv_endpoint,
        rdzv_id=args.rdzv_id,
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .inference import evaluate_checkpoint

    if args.json:
        check_writable(args.json)  # before the evaluation, not after its table
    result = evaluate_checkpoint(
        checkpoint_dir(args.checkpoint),
        root=args.root,
        split=args.split,
        allow_overlap=args.allow_overlap,
        threshold=args.threshold,
        max_accuracy_loss=args.max_accuracy_loss,
    )
    if args.json:  # written before the table is printed: no table over a failed command
        from .runlog import atomic_write_json

        atomic_write_json(args.json, result["metrics"])
    print(result["table"])
    return 0


def check_writable(path: str | Path) -> None:
    """Fail now (one line) when ``path`` cannot be written: an existing folder, a missing or
    read-only parent folder."""
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{path} is a folder; pass a file name such as metrics.json")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"{parent} does not exist; create it or write the JSON elsewhere")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CommandError(f"{path}: permission denied; write the JSON somewhere writable")


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict_images

    if args.onnx:
        from .export import predict_onnx

        predictions = predict_onnx(args.onnx, args.images, threshold=args.threshold)
    else:
        predictions = predict_images(
            checkpoint_dir(args.checkpoint), args.images, threshold=args.threshold
        )
    if args.json:
        print(json.dumps(predictions, indent=2))
        return 0
    from .predictor import describe_thresholds

    first = predictions[0]["attributes"].values() if predictions else []
    source = "--threshold" if args.threshold is not None else "saved in the model"
    print(describe_thresholds([p["threshold"] for p in first], source))
    for item in predictions:
        print(item["image"])
        for name, p in item["attributes"].items():
            mark, cmp = ("yes", ">=") if p["decision"] else ("no ", "< ")
            print(
                f"  {name:<24} {mark}  p={p['probability']:.3f} {cmp} {p['threshold']:.3f}"
                f"  score={p['score']:+.3f}"
            )
        for name, label in item.get("multiclass", {}).items():
            print(f"  {name:<24} {label}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce_clothing

    reproduce_clothing(
        args.root,
        folds=args.folds,
        out=args.out,
        quick=args.quick,
        overrides=args.set,
        protocol=args.protocol,
        label_fractions=args.label_fraction,
        run_folds=args.run_folds,
    )
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from .data.verify import verify_dataset

    options = dict(_parse_options(args.option))
    options.setdefault("decode", not args.fast)  # the older --option decode=... still works
    if args.json:
        check_writable(args.json)  # before the images are read, not after
    report = verify_dataset(args.dataset, args.root, raise_on_error=False, progress=True, **options)
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    print(report.format_text())
    if not report.ok:
        raise CommandError(
            f"{report.num_problems} problem(s) in {args.dataset} at {args.root}; first: "
            f"{report.problems[0]}"
        )
    return 0


def _feature_cache(args: argparse.Namespace):  # -> FeatureCache (its module imports torch)
    """The feature cache of ``apcnn cache``: ``--dir``, else ``$APCNN_CACHE/features``."""
    from .features import FeatureCache

    if args.dir:
        return FeatureCache(args.dir)
    from .training.inputs import cache_root

    return FeatureCache(cache_root() / "features")


def cmd_cache_info(args: argparse.Namespace) -> int:
    from .features import format_cache_info

    print(format_cache_info(_feature_cache(args)))
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    cache = _feature_cache(args)
    entries = cache.entries()
    if not entries:
        print(f"feature cache {cache.root}: no entries, nothing to delete")
        return 0
    what = f"{len(entries)} cached feature file(s), {sum(e.size for e in entries) / 2**20:.1f} MiB"
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"would delete {what} in {cache.root}; pass --yes to confirm")
        if input(f"delete {what} in {cache.root}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    count, freed = cache.clear()
    print(f"deleted {count} cached feature file(s) ({freed / 2**20:.1f} MiB) in {cache.root}")
    return 0


def cmd_data_template(args: argparse.Namespace) -> int:
    from .data.template import write_template

    write_template(args.dir, overwrite=args.overwrite)
    print(f"wrote {args.dir}/: images/, labels.csv, groups.yaml, README.txt")
    print(f"next: put your photos in {args.dir}/images, list them in labels.csv, then")
    print(f"  apcnn data verify folder --root {args.dir}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from .config import config_keys, list_presets

    if args.preset is None and not args.defaults:
        print("presets (configs/NAME.yaml); `apcnn config show NAME` lists a preset's keys,")
        print("`apcnn config show --defaults` every key with its default:")
        print("\n".join(f"  {name}" for name in list_presets()))
        return 0
    rows = config_keys(args.preset)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    title = f"preset {args.preset} (* = set by the preset)" if args.preset else "defaults"
    print(f"config keys, {title}; change one with --set KEY=VALUE")
    for row in rows:
        mark = "*" if row["set_by_preset"] else " "
        print(f"{mark} {row['key']} = {json.dumps(row['value'])}  [{row['type']}]")
        if row["help"]:
            print(textwrap.fill(row["help"], 98, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return 0


def cmd_config_list(args: argparse.Namespace) -> int:
    from .config import list_presets

    print("\n".join(list_presets()))
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .zeroshot import format_zeroshot, zeroshot_from_checkpoint

    result = zeroshot_from_checkpoint(
        checkpoint_dir(args.checkpoint),
        root=args.root,
        split=args.split,
        json_path=args.json,
        method=args.method,
        iap_posteriors=args.iap_posteriors,
        probabilities=args.probabilities,
    )
    print(format_zeroshot(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, meta_path_for

    path = export_onnx(checkpoint_dir(args.checkpoint), args.out, opset=args.opset)
    print(f"wrote {path} and {meta_path_for(path)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .html_report import write_html_report

    path = write_html_report(
        args.run_dir, pr_curves=not args.no_pr, split=args.split, root=args.root
    )
    print(f"wrote {path} and {path.with_name('report.md')}")
    return 0


def _parse_options(items: Sequence[str]) -> list[tuple[str, object]]:
    """``--option key=value`` items as (key, YAML value); ConfigError for a malformed one."""
    import yaml

    from .config import parse_override

    parsed = []
    for item in items:
        key, value = parse_override(item, what="--option", example="decode=true")
        parsed.append((key, yaml.safe_load(value)))
    return parsed


# ----------------------------------------------------------------------------- parser
_CKPT_HELP = "checkpoint folder, e.g. runs/NAME/checkpoints/MG-CNN (holds meta.json)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apcnn",
        description="Multi-task CNN attribute prediction (Abdulnabi et al., IEEE TMM 2015).",
    )
    parser.add_argument("--version", action="version", version=f"apcnn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="train on the embedded synthetic dataset and print results")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data, the splits and training (default: 0)"
    )
    p.add_argument("--quick", action="store_true", help="smaller dataset and schedule")
    p.add_argument(
        "--layer", action="store_true", help="only the multi-task layer on synthetic features"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --out (default: refuse, nothing is deleted)",
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train from a YAML config")
    p.add_argument("-c", "--config", required=True, help="YAML file (see configs/)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key"
    )
    p.add_argument("--out", default=None, help="run folder (default: run.out of the config)")
    p.add_argument("--resume", action="store_true", help="continue from the run's checkpoint")
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="data-parallel processes on this node (runs torchrun; gloo on CPU, NCCL on CUDA)",
    )
    p.add_argument("--nnodes", default="1", help="with --nproc: nodes in the job (torchrun)")
    p.add_argument(
        "--rdzv-endpoint", default=None, metavar="HOST:PORT", help="multi-node rendezvous"
    )
    p.add_argument("--rdzv-id", default=None, help="multi-node job id (torchrun --rdzv_id)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=_CKPT_HELP)
    p.add_argument("--root", default=None, help="dataset folder (default: the one in the run)")
    p.add_argument(
        "--split",
        default="test",
        help="split to score: test (default; the run's own test fold), val, train, or a split "
        "of the dataset (e.g. a labels.csv split value)",
    )
    p.add_argument("--json", default=None, help="write the metrics to this file")
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="evaluate even when the split shares images with the checkpoint's training data "
        "(a loud warning; the metrics are then optimistic)",
    )
    p.add_argument(
        "--threshold",
        default=None,
        choices=["0", "accuracy", "balanced", "prior_shift"],
        help="choose the decision thresholds again on the checkpoint's validation split by this "
        "train.threshold rule before scoring (the checkpoint is not changed); e.g. prior_shift "
        "to see what it does to mA without retraining",
    )
    p.add_argument(
        "--max-accuracy-loss",
        type=float,
        default=0.003,
        metavar="X",
        help="with --threshold prior_shift: the validation accuracy it may give up, a fraction "
        "(default 0.003 = 0.3 points)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict attributes of images")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help=_CKPT_HELP)
    source.add_argument("--onnx", default=None, help="run an exported ONNX file instead")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        metavar="T",
        help="decide 'yes' when the calibrated probability p >= T, for every attribute "
        "(default: the thresholds saved in the checkpoint, 0.5 unless tuned)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("reproduce", help="reproduce the paper's Table III")
    p.add_argument("benchmark", choices=["clothing"], help="which table to reproduce")
    p.add_argument("--root", required=True, help="ClothingAttributeDataset folder")
    p.add_argument(
        "--folds",
        type=int,
        default=5,
        help="k of the k-fold protocol; every fold is trained (--quick: fold 0 only) (default: 5)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder: OUT/foldK/ per fold, OUT/results.json, OUT/report.md "
        "(default: runs/reproduce-clothing, runs/reproduce-clothing-paper with --protocol paper)",
    )
    p.add_argument(
        "--protocol",
        choices=["adapted", "paper"],
        default="adapted",
        help="adapted: a trunk fine-tuned on all attributes, shared by the CNN methods "
        "(configs/clothing.yaml); paper: the paper's setting, each attribute its own CNN top "
        "(a copy of the head convolution from ImageNet weights, fine-tuned on that attribute "
        "alone) and nothing adapted jointly (configs/clothing_paper.yaml) (default: adapted)",
    )
    p.add_argument(
        "--label-fraction",
        type=float,
        nargs="+",
        default=[],
        metavar="F",
        help="label budgets: for each F in (0, 1) run the folds again keeping a stratified "
        "share F of each attribute's training labels (OUT/frac<F>/foldK; the same labels for "
        "every method, test labels untouched) and add accuracy and mA against F to results.json "
        "and the report; 1 is the main run, e.g. --label-fraction 0.05 0.1 0.25 0.5 1",
    )
    p.add_argument("--quick", action="store_true", help="one fold, reduced schedule")
    p.add_argument(
        "--run-folds",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="train only these folds (0-based; default: all, fold 0 with --quick), e.g. "
        "--quick --run-folds 0 1 2 3 4 for the short schedule on every fold, or one fold per "
        "call: finished folds in OUT are reused, so a last call with every fold gathers them",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a key of the recipe (configs/clothing.yaml), e.g. model.tail=all",
    )
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("data", help="dataset tools")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    v = data_sub.add_parser("verify", help="check a dataset's layout and summarise its labels")
    v.add_argument("dataset", help="dataset name (clothing, awa2, awa, celeba, cub, folder, ...)")
    v.add_argument("--root", required=True, help="dataset folder")
    v.add_argument("--json", default=None, help="write the summary to this file")
    v.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, repeatable: e.g. --option skip_bad_images=true",
    )
    v.add_argument(
        "--fast",
        action="store_true",
        help="check that image files exist and are not empty, without decoding them (default: "
        "decode every image, find truncated files and duplicates)",
    )
    v.set_defaults(func=cmd_data_verify)
    t = data_sub.add_parser(
        "template", help="write an empty 'folder' dataset to fill in (docs/datasets.md)"
    )
    t.add_argument("dir", metavar="DIR", help="folder to create (images/, labels.csv, ...)")
    t.add_argument("--overwrite", action="store_true", help="replace existing template files")
    t.set_defaults(func=cmd_data_template)

    p = sub.add_parser("cache", help="the feature cache ($APCNN_CACHE/features): info, clear")
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    for action, text in [
        ("info", "folder, number of entries, total size, one line per entry"),
        ("clear", "delete every cached feature file (asks first; --yes to skip)"),
    ]:
        c = cache_sub.add_parser(action, help=text)
        c.add_argument(
            "--dir",
            default=None,
            help="cache folder (default: $APCNN_CACHE/features, "
            "$APCNN_CACHE defaulting to ~/.cache/apcnn)",
        )
        if action == "clear":
            c.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        c.set_defaults(func=cmd_cache_info if action == "info" else cmd_cache_clear)

    p = sub.add_parser("config", help="training configuration: presets and keys")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = config_sub.add_parser(
        "show", help="every config key with its type, value and meaning (no PRESET: the presets)"
    )
    c.add_argument(
        "preset", nargs="?", default=None, metavar="PRESET", help="a preset, e.g. folder"
    )
    c.add_argument(
        "--defaults", action="store_true", help="the keys with their defaults (no preset)"
    )
    c.add_argument("--json", action="store_true", help="print JSON")
    c.set_defaults(func=cmd_config_show)
    c = config_sub.add_parser("list", help="the preset names (configs/NAME.yaml)")
    c.set_defaults(func=cmd_config_list)

    p = sub.add_parser("zeroshot", help="zero-shot classes from predicted attributes (DAP/IAP)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=_CKPT_HELP)
    p.add_argument("--root", default=None, help="dataset folder (default: the one in the run)")
    p.add_argument(
        "--split", default=None, help="unseen-class split (default: 'unseen' if any, else 'test')"
    )
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument(
        "--method",
        choices=["dap", "iap"],
        default="dap",
        help="direct (DAP, default) or indirect (IAP) attribute prediction (Lampert et al.)",
    )
    p.add_argument(
        "--iap-posteriors",
        choices=["dap", "logistic"],
        default="dap",
        help="IAP seen-class posteriors: DAP over seen classes or a logistic layer on scores",
    )
    p.add_argument(
        "--probabilities",
        choices=["calibrated", "sigmoid"],
        default="calibrated",
        help="attribute probabilities: Platt-calibrated (default) or sigmoid of the raw score",
    )
    p.set_defaults(func=cmd_zeroshot)

    p = sub.add_parser("export", help="export a checkpoint (ONNX: scores and probabilities)")
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help=_CKPT_HELP)
    p.add_argument("--format", choices=["onnx"], default="onnx", help="file format (onnx)")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx (+ model.onnx.json)")
    p.add_argument(
        "--opset",
        type=int,
        default=17,
        help="ONNX opset version; lower it for an older runtime (default: 17)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained) and report.md")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by apcnn train")
    p.add_argument("--no-pr", action="store_true", help="skip the precision-recall curves")
    p.add_argument("--split", default="test", help="split for the precision-recall curves")
    p.add_argument("--root", default=None, help="dataset folder (default: the one in the run)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("apcnn: interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `apcnn config show | head`: the reader left; nothing to report
        # point stdout at devnull so the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (*_user_errors(), OSError, RuntimeError) as err:
        message = error_line(err)
        if args.debug or message is None:
            raise
        print(f"apcnn {args.command}: error: {message}", file=sys.stderr)
        return 2


#: errno -> what to do about it (the OSError boundary of :func:`main`)
_OS_FIXES = {
    errno.EACCES: "check its permissions or write somewhere else (--out / --json)",
    errno.EPERM: "check its permissions or write somewhere else (--out / --json)",
    errno.ENOSPC: "free some space on that disk or write somewhere else (--out / APCNN_CACHE)",
    errno.EDQUOT: "free some space (disk quota) or write somewhere else (--out / APCNN_CACHE)",
    errno.EROFS: "the file system is read-only; write somewhere else (--out / APCNN_CACHE)",
    errno.ENOENT: "check the path",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENOTDIR: "a parent of that path is a file, not a folder",
}


def error_line(err: BaseException) -> str | None:
    """The one line :func:`main` prints for ``err``; None for an error that is a bug (shown with
    its traceback).

    - An error re-raised by a DataLoader worker (``Caught X in DataLoader worker process N.``
      followed by the worker's traceback): the traceback's last line, the original message.
    - An ``OSError`` from the system (it has ``errno``/``filename``): the file, the reason and
      a fix (:data:`_OS_FIXES`).
    - The project's own errors (:func:`_user_errors`): their message.
    """
    text = str(err).strip()
    if text.startswith("Caught ") and "DataLoader worker" in text.splitlines()[0]:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        # "apcnn.data.errors.CorruptImageError: img.jpg: cannot decode ..." -> the message
        head, sep, rest = last.partition(": ")
        message = rest if sep and " " not in head else last
        return f"{message} (in a DataLoader worker; --debug shows its traceback)"
    project = (CommandError, *_user_errors()[3:])  # DatasetError, ConfigError, CheckpointError, ...
    if isinstance(err, OSError) and not isinstance(err, project) and err.errno is not None:
        where = f"{err.filename}: " if err.filename is not None else ""
        fix = _OS_FIXES.get(err.errno, "check the file and the disk")
        reason = err.strerror or os.strerror(err.errno)
        return f"{where}{reason} [{errno.errorcode.get(err.errno, err.errno)}]; {fix}"
    if isinstance(err, (*_user_errors(), OSError)):
        return text or type(err).__name__
    return None


if __name__ == "__main__":
    sys.exit(main())
