"""/doodle: text written in a handwriting the model invents, with buttons for a new hand or a morph.

A button's custom_id holds at most 100 characters, too few for the text, so the reply quotes the
text on its last line and the buttons read it back from the message they are on: they work
after a restart, with nothing kept in memory.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands.options import descriptions, slash_range
from bot.markdown import escape, unescape
from bot.runner import Request
from models.handwriting.text import MAX_CHARS
from models.jobs import Result
from models.tasks.doodle import INK, NEATNESS, SEED, TEXT
from models.tasks.dream import random_seed

if TYPE_CHECKING:
    from bot.app import EaselBot

LABELS = {"new": ("New hand", "✍️"), "morph": ("Morph", "🎞️")}
QUOTE = "> "


def quote(text: str) -> str:
    """The text as one quoted line that Discord shows verbatim (no markdown, no pings) and `unquote` reverses."""
    return QUOTE + escape(" ".join(text.splitlines()))


def unquote(content: str) -> str | None:
    """The text a reply quoted on its last line, or None if the message has none."""
    last = content.rsplit("\n", 1)[-1]
    return unescape(last[len(QUOTE):]) if last.startswith(QUOTE) else None


class DoodleButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"easel:doodle:(?P<action>new|morph):(?P<seed>\d+):(?P<neat>\d+):(?P<ink>[a-z]+)"):
    """Seed, neatness and ink travel in the custom_id; the text is read from the message itself."""

    def __init__(self, action: str, seed: int, neatness_pct: int, ink: str) -> None:
        label, emoji = LABELS[action]
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=discord.ButtonStyle.secondary,
                                           custom_id=f"easel:doodle:{action}:{seed}:{neatness_pct}:{ink}"))
        self.action, self.seed, self.neatness, self.ink = action, seed, neatness_pct / 100, ink

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]) -> DoodleButton:
        return cls(match["action"], int(match["seed"]), int(match["neat"]), match["ink"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: EaselBot = interaction.client  # type: ignore[assignment]
        text = unquote(interaction.message.content if interaction.message else "") or ""
        if self.action == "new":
            request = write_request(text, random_seed(), self.neatness, self.ink, "doodle:new")
        else:
            options = {"mode": "morph", "text": text, "seed": self.seed, "seed_b": random_seed(), "neatness": self.neatness,
                       "ink": self.ink}
            request = Request("doodle:morph", "doodle", options, describe=describe)
        await bot.runner.handle(interaction, request)


def describe(result: Result) -> str:
    info = result.info
    if info["mode"] == "morph":
        head = f"🎞️ Morph from hand **{info['seed']}** to hand **{info['seed_b']}** ({info['frames']} frames)"
    else:
        head = (f"✍️ Written in the hand of seed **{info['seed']}** · neatness {info['neatness']:g} · {info['ink']} ink"
                f" · `/doodle seed:{info['seed']}` writes in it again")
    if info["unwritten"]:
        head += f"\n(boxed **?**: I can't write {' '.join(info['unwritten'])})"
    return f"{head}\n{quote(info['text'])}"


def buttons(result: Result) -> discord.ui.View:
    info = result.info
    view = discord.ui.View(timeout=None)
    for action in LABELS:
        view.add_item(DoodleButton(action, info["seed"], round(info["neatness"] * 100), info["ink"]))
    return view


def write_request(text: str, seed: int, neatness: float, ink: str, command: str = "doodle") -> Request:
    options = {"mode": "write", "text": text, "seed": seed, "neatness": neatness, "ink": ink}
    return Request(command, "doodle", options, describe=describe, view=buttons)


class Doodle(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot

    @app_commands.command(description="Write your text in a handwriting the model invents; each seed is another hand")
    @app_commands.describe(**descriptions(text=TEXT, seed=SEED, neatness=NEATNESS, ink=INK))
    @app_commands.choices(ink=[app_commands.Choice(name=name, value=name) for name in INK.choices])
    async def doodle(
        self,
        interaction: discord.Interaction,
        text: app_commands.Range[str, 1, MAX_CHARS],
        seed: slash_range(SEED) | None = SEED.default,
        neatness: slash_range(NEATNESS) = NEATNESS.default,
        ink: str = INK.default,
    ) -> None:
        await self.bot.runner.handle(interaction, write_request(text, random_seed() if seed is None else seed, neatness, ink))


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Doodle(bot))
    bot.add_dynamic_items(DoodleButton)
