"""/stylize: a photo painted in the style of an attached image or of built-in presets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.commands.options import descriptions, slash_range
from bot.markdown import escape
from bot.replies import send_error
from bot.runner import Request
from models.jobs import Result
from models.style.presets import PRESET_NAMES
from models.tasks.stylize import MAX_SIDE, PRESERVE_COLORS, PRESETS, STRENGTH

if TYPE_CHECKING:
    from bot.app import EaselBot


def preset_label(spec: str) -> str:
    """'3:1,12:1' -> '3 · Electric abstract (50%) + 12 · Soft lavender (50%)'."""
    parts = [p.partition(":") for p in spec.replace(" ", "").split(",") if p]
    try:
        weights = {int(i): float(w or 1) for i, _, w in parts}
        total = sum(weights.values())
        if len(weights) == 1:
            (i,) = weights
            return f"{i} · {PRESET_NAMES[i]}"
        return " + ".join(f"{i} · {PRESET_NAMES[i]} ({w / total:.0%})" for i, w in weights.items())
    except (ValueError, IndexError, ZeroDivisionError):
        return spec


def describe(result: Result, style: str) -> str:
    info = result.info
    bits = [f"🎨 Styled with **{style}**", f"strength {info['strength']:g}", f"{info['width']}×{info['height']}"]
    if info.get("preserve_colors"):
        bits.append("photo colours kept")
    return " · ".join(bits)


class Stylize(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot

    @app_commands.command(description="Paint a photo in the style of a picture you attach, or of a built-in style")
    @app_commands.describe(
        content="The photo to paint",
        style="A painting or any picture whose style to copy",
        **descriptions(preset=PRESETS, strength=STRENGTH, size=MAX_SIDE, preserve_colors=PRESERVE_COLORS),
    )
    async def stylize(
        self,
        interaction: discord.Interaction,
        content: discord.Attachment,
        style: discord.Attachment | None = None,
        preset: str | None = PRESETS.default,
        strength: slash_range(STRENGTH) = STRENGTH.default,
        size: slash_range(MAX_SIDE) = MAX_SIDE.default,
        preserve_colors: bool = PRESERVE_COLORS.default,
    ) -> None:
        if (style is None) == (preset is None):
            await send_error(interaction, "Attach a style image or choose a preset (one of the two).")
            self.bot.runner.answered_at_once(interaction, "stylize", "bad_input")
            return
        options: dict[str, object] = {STRENGTH.name: strength, MAX_SIDE.name: size, PRESERVE_COLORS.name: preserve_colors}
        uploads = {"content": content}
        if style is not None:
            uploads["style"] = style
            label = f"your picture {escape(style.filename)}"
        else:
            options[PRESETS.name] = preset
            label = preset_label(preset or "")
        await self.bot.runner.handle(interaction, Request("stylize", "stylize", options, uploads,
                                                          describe=lambda result: describe(result, label)))

    @stylize.autocomplete("preset")
    async def preset_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        typed = current.strip().lower()
        choices = []
        if any(c in typed for c in ",:"):
            choices.append(app_commands.Choice(name=f"Blend {current.strip()}"[:100], value=current.strip()[:100]))
        for index, name in enumerate(PRESET_NAMES):
            label = f"{index} · {name}"
            if not typed or typed in label.lower():
                choices.append(app_commands.Choice(name=label, value=str(index)))
        return choices[:25]


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Stylize(bot))
