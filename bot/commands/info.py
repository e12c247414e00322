"""/help and /status: what the bot does and how it is doing (both only shown to the asker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from models.style.presets import PRESET_NAMES
from models.handwriting.text import MAX_CHARS
from models.tasks import doodle, dream, fix, stylize

if TYPE_CHECKING:
    from bot.app import EaselBot


class Info(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="What Easel can do, and its limits")
    async def help(self, interaction: discord.Interaction) -> None:
        s = self.bot.settings
        text = (
            "**Easel** — deep-learning art tools\n"
            "• `/stylize content:<photo> style:<picture>` paints your photo in the style of the picture; "
            f"or pick `preset:` from {len(PRESET_NAMES)} built-in styles (blends like `3:0.5,12:0.5` work). "
            f"`strength` {stylize.STRENGTH.span()}, `size` {stylize.MAX_SIDE.span()} px, "
            "`preserve_colors` keeps the photo's colours.\n"
            "• `/dream [count] [seed] [truncation]` dreams up faces; the same seed gives the same faces. "
            f"`count` {dream.COUNT.span()}, `truncation` {dream.TRUNCATION.span()}. "
            "Buttons: new faces, variations, and a morph animation.\n"
            f"• `/fix photo:<photo> [strength]` sharpens a blurry photo at full size; `strength` {fix.STRENGTH.span()}.\n"
            f"• `/doodle text:<up to {MAX_CHARS} characters> [seed] [neatness] [ink]` writes your text, Chinese and Latin, "
            "in a handwriting the model invents; `|` starts a new line, each seed is another hand. "
            f"`neatness` {doodle.NEATNESS.span()}, `ink` {doodle.INK.span()}. "
            "Buttons: a new hand, and a morph from this hand to another.\n"
            f"Limits: images up to {s.download_limit_mb:.0f} MB and {s.max_pixels / 1e6:.0f} megapixels; "
            f"results up to {s.upload_limit_mb:.0f} MB; {s.max_jobs_per_user} requests at a time per person, "
            f"{s.cooldown_s:g} s between requests."
        )
        await interaction.response.send_message(text, ephemeral=True)
        self.bot.runner.answered_at_once(interaction, "help")

    @app_commands.command(name="status", description="Queue length, devices and models")
    async def status(self, interaction: discord.Interaction) -> None:
        st = self.bot.pool.status()
        devices = ", ".join(f"{d['name']} ({d['device']}, {'busy' if d['busy'] else 'idle'}; models: {', '.join(d['models']) or 'none yet'})"
                            for d in st["devices"])
        text = (f"**Requests:** {self.bot.runner.limiter.in_flight()} being handled\n"
                f"**Queue:** {st['queued']} waiting, {st['running']} running (room for {st['max_queue']})\n"
                f"**Devices:** {devices}\n**Latency:** gateway {self.bot.latency * 1000:.0f} ms")
        await interaction.response.send_message(text, ephemeral=True)
        self.bot.runner.answered_at_once(interaction, "status")


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Info(bot))
