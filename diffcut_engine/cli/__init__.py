"""The ``diffcut`` command line: one module per command, the shared options in :mod:`.options`.

``diffcut segment INPUT... -o OUTDIR`` segments images (files, folders, globs); ``diffcut video`` a video;
``diffcut eval`` scores the engine on a benchmark with the paper's protocol; ``diffcut bench`` times the stages;
``diffcut export`` writes the encoder as ONNX (or TensorRT); ``diffcut info`` prints versions, backends and
devices. Results go to stdout, progress and logs to stderr. A :class:`DiffCutError` is printed as one
``error: ...`` line with exit code 2 (``--debug`` shows the traceback); inputs that fail are reported one line
each and the run goes on, ending with exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import DiffCutError
from . import batch, bench, export, info, segment, video
from . import eval as eval_command  # (not to shadow the builtin here)
from .options import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, config_from_args

__all__ = ["main", "build_parser", "config_from_args", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE"]

#: The sub-command modules, in the order ``diffcut --help`` lists them.
COMMANDS = (segment, export, info, eval_command, video, bench, batch)


def build_parser() -> argparse.ArgumentParser:
    """The ``diffcut`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="diffcut", description="Zero-shot image segmentation with diffusion "
                                     "features (DiffCut, NeurIPS 2024).")
    parser.add_argument("--version", action="version", version=f"diffcut-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Run ``diffcut`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "quiet", False):
        os.environ["DIFFCUT_NO_PROGRESS"] = "1"
    try:
        return args.func(args)
    except DiffCutError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
