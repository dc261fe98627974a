"""The ``fbjax`` command line: ``train``, ``convert``, ``inspect``, ``eval``.

    fbjax train --experiment PATH_OR_MODULE[:VARIANT] --workdir DIR [--set a.b=value ...]
                [--print-config] [--verbose]
    fbjax convert --from-hf HF_DIR --out DIR        |  fbjax convert --to-hf CKPT --out HF_DIR
    fbjax inspect CKPT_DIR
    fbjax eval --workdir DIR [--stage NAME] [--step N] --out FILE   (see fbjax.cli_eval)
"""

from __future__ import annotations

import argparse
import logging
import sys

# Libraries that log at INFO by default (Orbax through absl prints hundreds of lines a run).
_QUIET = ("absl", "jax", "jax._src", "orbax", "orbax.checkpoint", "tensorflow", "etils",
          "tensorflow_datasets", "matplotlib", "urllib3", "filelock")


def configure_logging(verbose: bool) -> None:
    """fbjax's own messages at INFO; library logs at WARNING unless ``verbose``."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("fbjax").setLevel(logging.INFO)
    for name in _QUIET:
        logging.getLogger(name).setLevel(level)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
        absl_logging.set_stderrthreshold("info" if verbose else "warning")
    except ImportError:
        pass


def _train(args: argparse.Namespace) -> int:
    from fbjax import distributed
    from fbjax.run import experiment, overrides, stages

    _, _, config = experiment.load(args.experiment, args.set or [])
    if args.print_config:
        print(overrides.dumps(config))
        return 0
    distributed.initialize(
        coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
    )
    stages.run(config, workdir=args.workdir, progress=not args.no_progress)
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
                       help="override a config field, e.g. --set train.steps=50 or "
                            "--set stages.sft.train.steps=10 (repeatable)")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (after every --set) and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--verbose", action="store_true", help="library logs at INFO")
    train.add_argument("--system-malloc", action="store_true",
                       help="leave glibc's malloc as it is (by default freed memory stays in the "
                            "process: fbjax.host_memory)")
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

    from fbjax.cli_eval import add_eval_parser

    add_eval_parser(sub)
    return parser


def _bad_input() -> tuple[type[BaseException], ...]:
    """Errors that mean the command's input is wrong: config keys and values, files, records."""
    return (KeyError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, ModuleNotFoundError, SyntaxError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    if args.command in ("train", "eval") and not args.system_malloc:
        from fbjax.host_memory import keep_freed_memory

        keep_freed_memory()  # before JAX starts its threads (fbjax.host_memory)
    try:
        return args.func(args)
    except _bad_input() as e:
        # One line naming the cause, no traceback (fbjax.checkpoint.CheckpointError is a
        # ValueError: an unusable checkpoint, or a resume with a changed config).
        if isinstance(e, SyntaxError):
            message = f"{e.filename}:{e.lineno}: {e.msg}"
        elif isinstance(e, KeyError) and e.args:
            message = e.args[0]
        else:
            message = str(e) or type(e).__name__
            if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
                message = f"{e.filename}: {message}"
        print(f"fbjax {args.command}: error: {message}", file=sys.stderr)
        return 2
    except NotImplementedError as e:
        # What a paper variant needs and fbjax does not have yet (fbjax.data.sources.
        # UnavailableError): one line naming it. Any other NotImplementedError is a bug.
        from fbjax.data.sources import UnavailableError

        if not isinstance(e, UnavailableError):
            raise
        print(f"fbjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        # A run that failed (fbjax.train.nonfinite.NonFiniteLossError names the step).
        print(f"fbjax {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
