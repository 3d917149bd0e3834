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
import contextlib
import difflib
import logging
import os
import re
import sys
import warnings

from .. import __version__
from ..errors import DiffCutError
from . import batch, bench, export, info, segment, video
from . import eval as eval_command  # (not to shadow the builtin here)
from .options import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, config_from_args

__all__ = ["main", "build_parser", "config_from_args", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE"]

#: The sub-command modules, in the order ``diffcut --help`` lists them.
COMMANDS = (segment, export, info, eval_command, video, bench, batch)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are two short lines with a "did you mean" suggestion (difflib), instead of
    the whole usage block. Sub-command parsers are of the same class (argparse makes them so)."""

    def option_strings(self) -> list:
        return [s for action in self._actions for s in action.option_strings]

    def suggest(self, word: str, candidates) -> str:
        """``"; did you mean --tau?"`` for the closest of ``candidates`` to ``word``, or ``""``."""
        key = word.split("=", 1)[0]
        close = difflib.get_close_matches(key, list(candidates), n=2, cutoff=0.6)
        return f"; did you mean {' or '.join(close)}?" if close else ""

    def error(self, message):
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = [c.strip().strip("'") for c in m.group(2).split(",")]
            message += self.suggest(m.group(1), choices)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n(see '{self.prog} --help' for the options)\n")

    def unrecognized(self, extras) -> None:
        """Refuse unknown arguments, suggesting the closest options of this (sub-)command."""
        options = self.option_strings()
        hints = [(x, self.suggest(x, options)) for x in extras if x.startswith("-")]
        hints = [(x, h) for x, h in hints if h]
        text = f"unrecognized argument{'s' if len(extras) > 1 else ''}: {' '.join(extras)}"
        if len(hints) == 1:
            text += hints[0][1]
        elif hints:
            text += "".join(f"; {x}: {h[2:]}" for x, h in hints)
        self.error(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``diffcut`` argument parser with every sub-command."""
    parser = Parser(prog="diffcut", description="Zero-shot image segmentation with diffusion "
                    "features (DiffCut, NeurIPS 2024).")
    parser.add_argument("--version", action="version", version=f"diffcut-engine {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.commands = {}
    for command in COMMANDS:
        p = command.add_parser(sub)
        parser.commands[p.prog.split()[-1]] = p
    return parser


#: Libraries whose loading bars, log messages and warnings ``--quiet`` silences.
QUIET_LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "torch", "onnxruntime", "accelerate")


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True):
    """Silence the loading bars, log messages and warnings of the model libraries (``--quiet``); restored at the
    end. Errors still show."""
    if not enabled:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "DIFFUSERS_VERBOSITY",
                                                  "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS")}
    os.environ.update(HF_HUB_DISABLE_PROGRESS_BARS="1", DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error",
                      TRANSFORMERS_NO_ADVISORY_WARNINGS="1")
    loggers = {name: logging.getLogger(name) for name in QUIET_LIBRARIES}
    levels = {name: lg.level for name, lg in loggers.items()}
    restore = []
    for lib in ("diffusers", "transformers"):  # their own verbosity and bars, if already imported
        mod = sys.modules.get(lib)
        utils = getattr(getattr(mod, "utils", None), "logging", None) if mod is not None else None
        if utils is not None and hasattr(utils, "get_verbosity"):
            restore.append((utils.set_verbosity, utils.get_verbosity()))
            utils.set_verbosity(logging.ERROR)
            enabled_now = getattr(utils, "is_progress_bar_enabled", lambda: True)()
            if hasattr(utils, "disable_progress_bar") and enabled_now:
                utils.disable_progress_bar()
                restore.append((lambda _, u=utils: u.enable_progress_bar(), None))
    hub_utils = getattr(sys.modules.get("huggingface_hub"), "utils", None)
    if hasattr(hub_utils, "disable_progress_bars") and not hub_utils.are_progress_bars_disabled():
        hub_utils.disable_progress_bars()
        restore.append((lambda _: hub_utils.enable_progress_bars(), None))
    for lg in loggers.values():
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(%s)(\.|$)" % "|".join(QUIET_LIBRARIES))
            yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for fn, value in reversed(restore):
            fn(value)
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


def main(argv=None) -> int:
    """Run ``diffcut`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        parser.commands.get(args.command, parser).unrecognized(extras)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet = getattr(args, "quiet", False)
    if quiet:
        os.environ["DIFFCUT_NO_PROGRESS"] = "1"
    try:
        with quiet_libraries(quiet):
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
