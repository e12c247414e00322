"""/fix: deblur a photo, with a before/after crop."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands.options import descriptions, slash_range
from bot.runner import Request
from models.jobs import Result
from models.tasks.fix import STRENGTH

if TYPE_CHECKING:
    from bot.app import EaselBot


def describe(result: Result) -> str:
    info = result.info
    return (f"🔧 Deblurred at full size ({info['width']}×{info['height']}, strength {info['strength']:g}). "
            "The second image compares a detailed crop before and after.")


class Fix(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot

    @app_commands.command(description="Sharpen a blurry photo (camera shake, missed focus, soft lens)")
    @app_commands.describe(photo="The blurry photo", **descriptions(strength=STRENGTH))
    async def fix(self, interaction: discord.Interaction, photo: discord.Attachment,
                  strength: slash_range(STRENGTH) = STRENGTH.default) -> None:
        await self.bot.runner.handle(interaction, Request("fix", "fix", {"strength": strength}, {"photo": photo},
                                                          describe=describe))


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Fix(bot))
