"""The `easel` console script: the model commands, plus `run` and `demo` for the bot."""

from __future__ import annotations

import argparse
import sys

from models.cli import add_model_commands, run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easel", description="Easel: deep-learning art tools in a Discord server.")
    add_model_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
