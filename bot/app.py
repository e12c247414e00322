"""EaselBot: loads the command cogs, starts the inference pool, syncs commands, shuts down cleanly.

With EASEL_SHARD_COUNT set, the same bot runs as discord.py's AutoShardedBot over this process's
shards (EASEL_SHARD_IDS); the process holding shard 0 syncs the commands for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import aiohttp
import discord
import yarl
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot import health
from bot.controls import CancelButton, DeleteButton
from bot.metrics import Metrics
from bot.replies import send_error
from bot.runner import Runner
from bot.settings import Settings
from models.pool import Pool, make_pool, resolve_devices

log = logging.getLogger("easel")

REPLY_GRACE_S = 30  # after the jobs: time for the last results and apologies to upload

EXTENSIONS = ("bot.commands.stylize", "bot.commands.dream", "bot.commands.fix", "bot.commands.doodle", "bot.commands.info")


class EaselBot(commands.Bot):
    def __init__(self, settings: Settings, pool: Pool | None = None) -> None:
        """`pool` replaces the one EASEL_BACKEND names (tests)."""
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # Easel has no voice features
        intents = discord.Intents.none()
        intents.guilds = True  # slash commands need no privileged intents
        shards = {} if settings.shard_count is None else {
            "shard_count": settings.shard_count, "shard_ids": list(settings.shard_ids) if settings.shard_ids else None}
        dms = settings.allow_dms
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **shards,
                         # no message pings anyone: captions carry names people chose (files, texts)
                         allowed_mentions=discord.AllowedMentions.none(),
                         # where the commands appear: servers, and direct messages with the bot only when allowed
                         allowed_contexts=discord.app_commands.AppCommandContext(guild=True, dm_channel=dms, private_channel=False),
                         allowed_installs=discord.app_commands.AppInstallationType(guild=True, user=False))
        self.settings = settings
        self.pool = pool or make_pool(settings.backend, settings.pool_config(), settings.ray_config())
        self.metrics = Metrics()
        self.runner: Runner | None = None  # made in setup_hook, once there is an HTTP session
        self.session: aiohttp.ClientSession | None = None
        self.health: health.HealthServer | None = None
        self.tree.error(self.on_app_command_error)

    async def login(self, token: str) -> None:
        """Point discord.py at the configured API (Discord, a compatible server, or the emulator)."""
        Route.BASE = self.settings.discord_api_base.rstrip("/")
        await super().login(token)

    async def setup_hook(self) -> None:
        # A custom API base has its own gateway: ask it, as AutoShardedClient would.
        _, url, _ = await self.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        self.session = aiohttp.ClientSession()
        self.runner = Runner(self.pool, self.settings, self.session, self.metrics)
        self.metrics.watch(self.pool.status)
        if self.settings.http_port is not None:
            self.health = health.HealthServer(self, self.settings.http_host, self.settings.http_port)
            await self.health.start()
        await self.pool.start()  # models load and warm up before we take any interaction
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        self.add_dynamic_items(CancelButton, DeleteButton)  # routed by custom_id, after a restart too
        if self.settings.holds_shard_zero:
            await self.sync_commands()

    async def sync_commands(self) -> None:
        if self.settings.guild_id is not None:
            guild = discord.Object(id=self.settings.guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
        else:
            synced = await self.tree.sync()
        log.info("synced %d commands %s", len(synced), f"to guild {self.settings.guild_id}" if self.settings.guild_id else "globally")

    def connected(self) -> bool:
        """Every gateway connection of this process is open (one, or one per shard)."""
        if isinstance(self, discord.AutoShardedClient):
            return self.is_ready() and all(not shard.is_closed() for shard in self.shards.values())
        return bool(self.ws is not None and self.ws.open and self.is_ready())

    async def on_ready(self) -> None:
        log.info("connected as %s (id %s)", self.user, self.user.id if self.user else "?")

    async def on_app_command_error(self, interaction: discord.Interaction, error: discord.app_commands.AppCommandError) -> None:
        """Errors outside our runner (a bad option value Discord let through, a bug): one sentence, logged."""
        if isinstance(error, discord.app_commands.TransformerError | discord.app_commands.CheckFailure):
            await send_error(interaction, "I couldn't understand one of the options; please check them and try again.")
            return
        log.error("command %s failed", interaction.command.name if interaction.command else "?", exc_info=error)
        await send_error(interaction, "Sorry, something went wrong on my side.")

    async def close(self) -> None:
        """Stop taking work, let jobs in flight finish (or cancel them at the deadline), let their
        replies go out, then disconnect: the HTTP session must outlive the last upload."""
        await self.pool.close(self.settings.shutdown_grace_s)
        if self.runner is not None:
            await self.runner.drain(timeout=REPLY_GRACE_S)
        await super().close()
        if self.health is not None:
            await self.health.stop()
        if self.session is not None:
            await self.session.close()
        if self.runner is not None:
            self.runner.quota.close()


class ShardedEaselBot(EaselBot, commands.AutoShardedBot):
    """EaselBot over several gateway connections (shards) in one process."""


def make_bot(settings: Settings) -> EaselBot:
    return EaselBot(settings) if settings.shard_count is None else ShardedEaselBot(settings)


async def run(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down within the grace period.

    A device that is not there fails here, before connecting to Discord (DeviceError).
    """
    if settings.backend == "local":
        resolve_devices(settings.device)
    bot = make_bot(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(bot.start(settings.token.get_secret_value()))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info("shutting down: finishing jobs in flight (up to %.0f s)", settings.shutdown_grace_s)
    await bot.close()
    stopping.cancel()
    await running  # re-raises a login failure or a fatal gateway error
