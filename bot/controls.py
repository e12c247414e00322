"""The asker's controls: Cancel on their private progress message, Delete on the public result.

Both are DynamicItems whose custom_id carries what they need (the asker's id, the job's id), so
they are routed after a restart too, with no view to keep in memory. Who may press: the asker
(Cancel), or the asker and members with Manage Messages in that channel (Delete), as Discord
reports their permissions in the interaction. Everyone else gets one private sentence.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord

from models.jobs import CancelOutcome

if TYPE_CHECKING:
    from bot.app import EaselBot

NOT_YOURS_CANCEL = "That request isn't yours; only the person who asked can cancel it."
CANCEL_ANSWERS = {
    CancelOutcome.ALREADY_CANCELLED: "That request was already cancelled.",
    CancelOutcome.FINISHED: "That request has already finished, so there is nothing to cancel.",
    CancelOutcome.UNKNOWN: "I no longer know this request; it may have been lost in a restart, so please run it again.",
}
NOT_YOURS_DELETE = "Only the person who asked, or someone who can manage messages here, can delete this."
ALREADY_GONE = "That message is already gone."


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:cancel:(?P<user>\d+):(?P<job>[0-9a-f]+)"):
    def __init__(self, user_id: int, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Cancel", emoji="🛑", style=discord.ButtonStyle.danger,
                                           custom_id=f"easel:cancel:{user_id}:{job_id}"))
        self.user_id, self.job_id = user_id, job_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]) -> CancelButton:
        return cls(int(match["user"]), match["job"])

    async def callback(self, interaction: discord.Interaction) -> None:
        bot: EaselBot = interaction.client  # type: ignore[assignment]
        if interaction.user.id != self.user_id:
            await interaction.response.send_message(NOT_YOURS_CANCEL, ephemeral=True)
        elif (outcome := bot.pool.cancel(self.job_id)) is CancelOutcome.CANCELLED:
            await interaction.response.defer()  # the runner edits this message to say it was cancelled
        else:
            await interaction.response.send_message(CANCEL_ANSWERS[outcome], ephemeral=True)


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:delete:(?P<user>\d+)"):
    def __init__(self, user_id: int) -> None:
        super().__init__(discord.ui.Button(label="Delete", emoji="🗑️", style=discord.ButtonStyle.secondary,
                                           custom_id=f"easel:delete:{user_id}"))
        self.user_id = user_id

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]) -> DeleteButton:
        return cls(int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        if interaction.user.id != self.user_id and not interaction.permissions.manage_messages:
            await interaction.response.send_message(NOT_YOURS_DELETE, ephemeral=True)
            return
        await interaction.response.defer()  # the message itself disappearing is the answer
        try:
            assert interaction.message is not None  # a button press always names its message
            await interaction.message.delete()
        except discord.NotFound:
            await interaction.followup.send(ALREADY_GONE, ephemeral=True)


def cancel_view(user_id: int, job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(user_id, job_id))
    return view


def with_delete(view: discord.ui.View | None, user_id: int) -> discord.ui.View:
    """The command's own buttons (if any) and the asker's Delete button."""
    view = view if view is not None else discord.ui.View(timeout=None)
    view.add_item(DeleteButton(user_id))
    return view
