"""``refinenet train CONFIG``: train (or resume) a model from a YAML config in ``configs/``."""

from __future__ import annotations

import argparse

from ..train import add_arguments, run_from_args


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_from_args(args)
