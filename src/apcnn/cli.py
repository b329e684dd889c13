"""The ``apcnn`` command line. Only this module sees argparse; every command calls library
functions with explicit arguments and turns the project's errors into one clear line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error classes whose message is meant for the user (no traceback)."""
    errors: list[type[BaseException]] = [CommandError, FileNotFoundError, ValueError]
    for module, name in [
        ("apcnn.data", "DatasetError"),
        ("apcnn.config", "ConfigError"),
        ("apcnn.checkpoint", "CheckpointError"),
        ("apcnn.engine", "DistributedRunError"),
    ]:
        try:
            mod = __import__(module, fromlist=[name])
            errors.append(getattr(mod, name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


# --------------------------------------------------------------------------- commands
def cmd_demo(args: argparse.Namespace) -> int:
    if args.layer:
        from .layer_demo import format_layer_demo, run_layer_demo

        print(format_layer_demo(run_layer_demo(seed=args.seed)))
        return 0
    from .demo import run_demo

    run_demo(out=Path(args.out), seed=args.seed, quick=args.quick)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return _launch_train(args)
    from .engine import train_from_config

    train_from_config(config_path=args.config, overrides=args.set, out=args.out, resume=args.resume)
    return 0


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

    result = evaluate_checkpoint(args.checkpoint, root=args.root, split=args.split)
    print(result["table"])
    if args.json:
        Path(args.json).write_text(json.dumps(result["metrics"], indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .inference import predict_images

    if args.onnx:
        from .export import predict_onnx

        predictions = predict_onnx(args.onnx, args.images)
    else:
        predictions = predict_images(args.checkpoint, args.images)
    if args.json:
        print(json.dumps(predictions, indent=2))
        return 0
    for item in predictions:
        print(item["image"])
        for name, p in item["attributes"].items():
            mark = "yes" if p["decision"] else "no "
            print(f"  {name:<24} {mark}  p={p['probability']:.3f}  score={p['score']:+.3f}")
        for name, label in item.get("multiclass", {}).items():
            print(f"  {name:<24} {label}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce_clothing

    reproduce_clothing(
        args.root, folds=args.folds, out=args.out, quick=args.quick, overrides=args.set
    )
    return 0


def cmd_data_verify(args: argparse.Namespace) -> int:
    from .data.verify import verify_dataset

    options = dict(_parse_options(args.option))
    report = verify_dataset(args.dataset, args.root, **options)
    print(report.format_text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


def cmd_zeroshot(args: argparse.Namespace) -> int:
    from .zeroshot import format_zeroshot, zeroshot_from_checkpoint

    result = zeroshot_from_checkpoint(
        args.checkpoint,
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

    path = export_onnx(args.checkpoint, args.out, opset=args.opset)
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smaller dataset and schedule")
    p.add_argument(
        "--layer", action="store_true", help="only the multi-task layer on synthetic features"
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
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--root", default=None, help="dataset folder (default: the one in the run)")
    p.add_argument("--split", default="test")
    p.add_argument("--json", default=None, help="write the metrics to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict attributes of images")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint")
    source.add_argument("--onnx", default=None, help="run an exported ONNX file instead")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("reproduce", help="reproduce the paper's Table III")
    p.add_argument("benchmark", choices=["clothing"], help="which table to reproduce")
    p.add_argument("--root", required=True, help="ClothingAttributeDataset folder")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", default="runs/reproduce-clothing")
    p.add_argument("--quick", action="store_true", help="one fold, reduced schedule")
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
        "--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option"
    )
    v.set_defaults(func=cmd_data_verify)

    p = sub.add_parser("zeroshot", help="zero-shot classes from predicted attributes (DAP/IAP)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--root", default=None, help="dataset folder (default: the one in the run)")
    p.add_argument(
        "--split", default=None, help="unseen-class split (default: 'unseen' if any, else 'test')"
    )
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--method", choices=["dap", "iap"], default="dap")
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
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx (+ model.onnx.json)")
    p.add_argument("--opset", type=int, default=17)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained) and report.md")
    p.add_argument("run_dir", metavar="RUN_DIR")
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
    except _user_errors() as err:
        if args.debug:
            raise
        print(f"apcnn {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
