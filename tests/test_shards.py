"""The bot sharded: the emulator routes guilds to shards as Discord does, and two bot processes,
one shard each, answer their own guilds through one Ray Serve application on a two-node cluster."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest

from bot.sandbox.emulator import DiscordEmulator

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def identify_close_code(emulator: DiscordEmulator, shard: list[int]) -> int | None:
    async with aiohttp.ClientSession() as session, session.ws_connect(emulator.gateway_url) as ws:
        await ws.receive_json()  # HELLO
        await ws.send_json({"op": 2, "d": {"token": emulator.token, "intents": 1, "shard": shard,
                                           "properties": {"os": "linux", "browser": "test", "device": "test"}}})
        message = await ws.receive()
        return ws.close_code if message.type == aiohttp.WSMsgType.CLOSE else None


async def test_the_emulator_refuses_a_wrong_shard_as_discord_does():
    emulator = DiscordEmulator(shard_count=2)
    await emulator.start()
    try:
        assert await identify_close_code(emulator, [0, 1]) == 4011  # fewer shards than required
        assert await identify_close_code(emulator, [2, 2]) == 4010  # no such shard
        assert await identify_close_code(emulator, [1, 2]) is None  # READY
    finally:
        await emulator.stop()


async def test_two_bot_processes_on_two_shards_answer_their_own_guilds_through_one_serve_app(real_weights, tmp_path):
    """A fake two-node Ray cluster (one CPU each) gets two replicas, one per node, from `easel serve`;
    two `python -m bot` processes hold shard 0 and shard 1 of 2; each guild's /dream is answered by
    its own shard's process."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
    from ray import serve
    from ray.cluster_utils import Cluster

    from models.pool.ray_serve import APP_NAME

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    emulator = DiscordEmulator(shard_count=2, guilds=2, heartbeat_interval_ms=1000)
    await emulator.start()
    processes: list[asyncio.subprocess.Process] = []
    outputs: list[bytearray] = []
    try:
        ray_env = {**os.environ, "EASEL_RAY_ADDRESS": cluster.address, "EASEL_DEVICE": "cpu", "EASEL_PRELOAD": "false"}
        served = subprocess.run([sys.executable, "-m", "models", "serve"], env={**ray_env, "EASEL_RAY_REPLICAS": "2"},
                                cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
        assert served.returncode == 0 and "with 2 replica(s)" in served.stdout, served.stdout + served.stderr[-3000:]
        ray.init(address=cluster.address)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2  # one CPU each: one replica per node
        for shard in (0, 1):
            env = {**ray_env, "DISCORD_TOKEN": emulator.token, "EASEL_DISCORD_API_BASE": emulator.api_base,
                   "EASEL_ATTACHMENT_HOSTS": emulator.cdn_host, "EASEL_COOLDOWN_S": "0", "EASEL_BACKEND": "ray",
                   "EASEL_SHARD_COUNT": "2", "EASEL_SHARD_IDS": str(shard)}
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "bot", cwd=tmp_path, env=env,
                                                           stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            processes.append(process)
            outputs.append(bytearray())
        drains = [asyncio.create_task(_drain(p, o)) for p, o in zip(processes, outputs, strict=True)]
        guilds = emulator.guild_ids
        assert {(g >> 22) % 2 for g in guilds} == {0, 1}
        for guild in guilds:  # shard 0's process syncs the commands before it connects
            await asyncio.wait_for(emulator.ready_for(guild), 240)
        records = []
        for i, guild in enumerate(guilds):
            records.append(await emulator.invoke("dream", {"count": 1, "seed": 7 + i}, guild_id=guild, user_id=10 + i))
        for record in records:
            await record.wait(timeout=120)
            assert record.files, record.summary()
        assert emulator.command_syncs == 1  # only the process holding shard 0 synced
        apps = serve.status().applications
        assert apps[APP_NAME].deployments["Easel"].replica_states.get("RUNNING") == 2
        for process in processes:
            process.terminate()
        assert [await asyncio.wait_for(p.wait(), 60) for p in processes] == [0, 0]
        await asyncio.gather(*drains)
        logs = [o.decode() for o in outputs]
        for shard, log in enumerate(logs):
            assert "Traceback" not in log and "SIGTERM received" not in log, log[-3000:]
            for guild in guilds:
                assert (f"guild={guild} " in log) == ((guild >> 22) % 2 == shard), log[-3000:]
    except (AssertionError, TimeoutError) as failure:
        shown = "\n".join(f"--- shard {i} ---\n{o.decode()[-3000:]}" for i, o in enumerate(outputs))
        raise AssertionError(f"{failure}\n{shown}") from failure
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
        await emulator.stop()
        ray.shutdown()
        cluster.shutdown()


async def _drain(process: asyncio.subprocess.Process, into: bytearray) -> None:
    """Read a bot's output as it comes: a full pipe would block it on its next log line."""
    assert process.stdout is not None
    while chunk := await process.stdout.read(65536):
        into.extend(chunk)
