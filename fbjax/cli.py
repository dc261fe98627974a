"""The ``fbjax`` command line: ``train``, ``convert``, ``inspect``.

    fbjax train --experiment PATH_OR_MODULE[:VARIANT] --workdir DIR [--set a.b=value ...]
    fbjax convert --from-hf HF_DIR --out DIR        |  fbjax convert --to-hf CKPT --out HF_DIR
    fbjax inspect CKPT_DIR
"""

from __future__ import annotations

import argparse
import logging
import sys


def _train(args: argparse.Namespace) -> int:
    from fbjax import distributed, experiment, recipes

    distributed.initialize(
        coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
    )
    module, variant, config = experiment.load(args.experiment, args.set or [])
    run = getattr(module, "run", None) or recipes.run_single
    run(config, workdir=args.workdir, progress=not args.no_progress)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from fbjax import analysis

    print(analysis.describe_checkpoint(args.checkpoint_dir, step=args.step,
                                       verify=not args.no_verify))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fbjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run an experiment module")
    train.add_argument("--experiment", required=True, help="PATH_OR_MODULE[:VARIANT]")
    train.add_argument("--workdir", required=True, help="checkpoints, logs and results go here")
    train.add_argument("--set", action="append", metavar="PATH=VALUE",
                       help="override a config field, e.g. --set train.steps=50 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--coordinator", default=None,
                       help="multi-host: coordinator address host:port (auto on TPU pods/Slurm)")
    train.add_argument("--num-processes", type=int, default=None)
    train.add_argument("--process-id", type=int, default=None)
    train.set_defaults(func=_train)

    from fbjax.cli_convert import add_convert_parser

    add_convert_parser(sub)

    inspect = sub.add_parser("inspect", help="describe a checkpoint")
    inspect.add_argument("checkpoint_dir")
    inspect.add_argument("--step", type=int, default=None)
    inspect.add_argument("--no-verify", action="store_true",
                         help="check files only; do not read the arrays back (faster, but blind "
                              "to damage inside large array files)")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        # Config and input errors, including fbjax.checkpoint.CheckpointError (a ValueError: an
        # unusable checkpoint, or a resume with a changed config): one line naming the cause.
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"fbjax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        # A run that failed (fbjax.train.nonfinite.NonFiniteLossError names the step).
        print(f"fbjax {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
