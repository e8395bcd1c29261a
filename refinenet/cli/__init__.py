"""The ``refinenet`` console command.

Each sub-command lives in its own module of this package with two functions,
``configure(parser)`` and ``run(args) -> int``; modules are imported only when their command
runs, so ``refinenet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

COMMANDS = {
    "predict": "segment images and write label maps and overlays",
    "convert": "convert a legacy RefineNet checkpoint into a Hub-layout folder",
    "push": "publish a model folder on the Hugging Face Hub",
    "models": "list the model zoo's weights, or hash and check model folders",
    "train": "train a model from a config file",
    "eval": "evaluate a model on a labelled dataset",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refinenet", description="RefineNet semantic segmentation")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def _module(name: str):
    return importlib.import_module(f"refinenet.cli.{name}_cmd")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # Parse the command name first, then let its module add the command's own arguments.
    if argv and argv[0] in COMMANDS:
        name = argv[0]
        command_parser = argparse.ArgumentParser(prog=f"refinenet {name}", description=COMMANDS[name])
        module = _module(name)
        module.configure(command_parser)
        args = command_parser.parse_args(argv[1:])
        # The command line as typed, so results written to files can say how they were made.
        args.command_line = shlex.join(["refinenet", *argv])
        return int(module.run(args) or 0)
    parser.parse_args(argv)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
