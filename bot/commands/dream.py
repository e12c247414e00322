"""/dream: GAN faces by seed, with buttons to re-roll, vary, or morph into another face."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands.options import descriptions, slash_range
from bot.runner import Request
from models.jobs import Result
from models.tasks.dream import COUNT, SEED, TRUNCATION, random_seed

if TYPE_CHECKING:
    from bot.app import EaselBot

LABELS = {"reroll": ("New faces", "🎲"), "vary": ("Variations", "🧬"), "morph": ("Morph", "🎞️")}


class DreamButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:dream:(?P<action>reroll|vary|morph):(?P<seed>\d+):(?P<count>\d+):(?P<trunc>\d+)"):
    """A button whose custom_id carries everything it needs, so it works after a restart too."""

    def __init__(self, action: str, seed: int, count: int, truncation_pct: int) -> None:
        label, emoji = LABELS[action]
        super().__init__(discord.ui.Button(label=label, emoji=emoji, style=discord.ButtonStyle.secondary,
                                           custom_id=f"easel:dream:{action}:{seed}:{count}:{truncation_pct}"))
        self.action, self.seed, self.count, self.truncation = action, seed, count, truncation_pct / 100

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]) -> DreamButton:
        return cls(match["action"], int(match["seed"]), int(match["count"]), int(match["trunc"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: EaselBot = interaction.client  # type: ignore[assignment]
        if self.action == "reroll":
            request = grid_request(random_seed(), self.count, self.truncation, "dream:reroll")
        elif self.action == "vary":
            options = {"mode": "variations", "seed": self.seed, "count": max(self.count, 4), "truncation": self.truncation}
            request = Request("dream:vary", "dream", options, describe=describe, view=buttons)
        else:
            options = {"mode": "morph", "seed": self.seed, "seed_b": random_seed(), "truncation": self.truncation}
            request = Request("dream:morph", "dream", options, describe=describe)
        await bot.runner.handle(interaction, request)


def describe(result: Result) -> str:
    info = result.info
    if info["mode"] == "morph":
        return f"🎞️ Morph from seed **{info['seed']}** to seed **{info['seed_b']}** ({info['frames']} frames)"
    what = "variations of the first face of" if info["mode"] == "variations" else "faces from"
    return (f"🧬 {info['count']} {what} seed **{info['seed']}** · truncation {info['truncation']:g}"
            f" · `/dream seed:{info['seed']} count:{info['count']}` gives them again")


def buttons(result: Result) -> discord.ui.View:
    info = result.info
    view = discord.ui.View(timeout=None)
    for action in LABELS:
        view.add_item(DreamButton(action, info["seed"], info["count"], round(info["truncation"] * 100)))
    return view


def grid_request(seed: int, count: int, truncation: float, command: str = "dream") -> Request:
    options = {"mode": "grid", "seed": seed, "count": count, "truncation": truncation}
    return Request(command, "dream", options, describe=describe, view=buttons)


class Dream(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot

    @app_commands.command(description="Dream up faces with a GAN; the same seed always gives the same faces")
    @app_commands.describe(**descriptions(count=COUNT, seed=SEED, truncation=TRUNCATION))
    async def dream(
        self,
        interaction: discord.Interaction,
        count: slash_range(COUNT) = COUNT.default,
        seed: slash_range(SEED) | None = SEED.default,
        truncation: slash_range(TRUNCATION) = TRUNCATION.default,
    ) -> None:
        await self.bot.runner.handle(interaction, grid_request(random_seed() if seed is None else seed, count, truncation))


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Dream(bot))
    bot.add_dynamic_items(DreamButton)  # the buttons of earlier replies work after a restart too
