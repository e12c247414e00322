"""The `easel` console script: the model commands, plus `run` and `demo` for the bot."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from models.cli import add_model_commands, run_command
from models.images import log_stream

NO_TOKEN = ("Set DISCORD_TOKEN to your bot's token (Discord Developer Portal -> your application -> Bot -> "
            "Reset Token), in the environment or in a .env file where you run easel.")


def setup_logging(level_name: str) -> logging.Handler:
    """The bot's log on stderr at EASEL_LOG_LEVEL, through a stream that decoding never captures."""
    import discord

    level = logging.getLevelNamesMapping()[level_name]
    handler = logging.StreamHandler(log_stream())
    discord.utils.setup_logging(handler=handler, level=level, root=True)
    # discord.py's DEBUG lines carry gateway payloads and REST URLs: interaction tokens, signed attachment URLs.
    logging.getLogger("discord").setLevel(max(level, logging.INFO))
    return handler


def cmd_run(args: argparse.Namespace) -> None:
    import aiohttp
    import discord

    from bot.app import run
    from bot.settings import Settings

    settings = Settings.load(args.env_file)
    if not settings.token.get_secret_value():
        raise SystemExit(f"easel: {NO_TOKEN}")
    setup_logging(settings.log_level)
    try:
        asyncio.run(run(settings))
    except discord.LoginFailure:
        raise SystemExit("easel: Discord rejected DISCORD_TOKEN; copy it again from the Developer Portal (Bot -> Reset Token).") from None
    except aiohttp.ClientError as error:
        raise SystemExit(f"easel: Could not reach Discord at {settings.discord_api_base} ({error}); "
                         "check the network and EASEL_DISCORD_API_BASE.") from None
    except OSError as error:  # e.g. EASEL_HTTP_PORT already taken
        raise SystemExit(f"easel: Could not start: {error}.") from None


def cmd_demo(args: argparse.Namespace) -> None:
    from bot.sandbox.demo import main

    main(args.out, args.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="easel", description="Easel: deep-learning art tools in a Discord server.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the bot (settings from the environment and .env)")
    p.add_argument("--env-file", type=Path, default=Path(".env"), help="read settings from this file too (default .env)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("demo", help="run the real bot against a local Discord emulator and save its replies")
    p.add_argument("--out", type=Path, default=Path("easel-demo"), help="folder for the replies (default ./easel-demo)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.set_defaults(func=cmd_demo)
    add_model_commands(sub)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
