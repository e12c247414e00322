"""Mechanics of the Discord layer's small parts: settings, the download guard, fairness limits, texts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bot.attachments import DownloadError, check_url
from bot.commands.dream import Dream
from bot.commands.fix import Fix
from bot.commands.stylize import Stylize
from bot.limits import LimitError, Limiter
from bot.replies import progress_text
from bot.settings import Settings, SettingsError
from models.jobs import Progress
from models.tasks import TASKS


@pytest.fixture
def clean_env(monkeypatch):
    """No EASEL_* or DISCORD_TOKEN from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("EASEL_") or name == "DISCORD_TOKEN":
            monkeypatch.delenv(name)
    return monkeypatch


def test_settings_from_env_file_and_environment(tmp_path, clean_env):
    env_file = tmp_path / ".env"
    env_file.write_text('# comment\nexport DISCORD_TOKEN="file-token"\nEASEL_DEVICE=cuda:1\nEASEL_COOLDOWN_S=2.5\n'
                        "EASEL_ATTACHMENT_HOSTS=127.0.0.1:9000, cdn.example.org\nEASEL_PRELOAD=no\n"
                        f"EASEL_CACHE_DIR={tmp_path / 'cache'}\n")
    clean_env.setenv("EASEL_DEVICE", "cpu")
    clean_env.setenv("EASEL_GUILD_ID", "42")
    s = Settings.load(env_file)
    assert (s.token.get_secret_value(), s.device, s.cooldown_s, s.guild_id, s.preload) == ("file-token", "cpu", 2.5, 42, False)
    assert s.attachment_hosts == ("127.0.0.1:9000", "cdn.example.org")
    assert s.upload_limit == 10 * 2**20 and s.http_port is None
    assert s.cache_dir == tmp_path / "cache" and s.pool_config().cache_dir == tmp_path / "cache"  # the pool loads from there


def test_the_token_never_shows_in_settings_repr_or_errors(tmp_path, clean_env):
    assert "sekrit" not in repr(Settings(token="sekrit")) and "sekrit" not in str(Settings(token="sekrit"))
    clean_env.setenv("DISCORD_TOKEN", "sekrit" * 100)
    assert Settings.load(None).token.get_secret_value() == "sekrit" * 100


@pytest.mark.parametrize("name, value, words", [
    ("EASEL_COOLDOWN", "3", "Unknown setting EASEL_COOLDOWN"),
    ("EASEL_MAX_BATCH", "lots", "EASEL_MAX_BATCH='lots' is not valid"),
    ("EASEL_MAX_BATCH", "0", "EASEL_MAX_BATCH='0' is not valid: it should be greater than or equal to 1"),
    ("EASEL_MAX_JOBS_PER_USER", "0", "EASEL_MAX_JOBS_PER_USER='0' is not valid: it should be greater than or equal to 1"),
    ("EASEL_COOLDOWN_S", "-1", "EASEL_COOLDOWN_S='-1' is not valid: it should be greater than or equal to 0"),
    ("EASEL_HTTP_PORT", "99999", "EASEL_HTTP_PORT='99999' is not valid: it should be less than or equal to 65535"),
    ("EASEL_LOG_LEVEL", "LOUD", "EASEL_LOG_LEVEL='LOUD' is not valid: it should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("EASEL_DEVICE", "tpu", "EASEL_DEVICE='tpu' is not valid: it must be auto, cpu, cuda or cuda:N"),
    ("EASEL_PRELOAD", "maybe", "EASEL_PRELOAD='maybe' is not valid"),
    ("EASEL_MAX_BATCH_MEGAPIXELS", "-2", "EASEL_MAX_BATCH_MEGAPIXELS='-2' is not valid"),
    ("EASEL_BACKEND", "rey", "EASEL_BACKEND='rey' is not valid: it should be 'local' or 'ray'"),
    ("EASEL_RAY_GPUS_PER_REPLICA", "2", "EASEL_RAY_GPUS_PER_REPLICA='2' is not valid: it should be less than or equal to 1"),
    ("EASEL_SHARD_IDS", "1", "EASEL_SHARD_IDS needs EASEL_SHARD_COUNT"),
])
@pytest.mark.parametrize("where", ["environment", ".env"])
def test_a_bad_setting_is_one_sentence_naming_the_variable(name, value, words, where, tmp_path, clean_env):
    env_file = tmp_path / ".env"
    if where == ".env":
        env_file.write_text(f"{name}={value}\n")
    else:
        clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        Settings.load(env_file)
    assert str(caught.value).startswith(words) and str(caught.value).endswith("see README.md, Configuration.")


def test_empty_values_keep_the_defaults(tmp_path, clean_env):
    (tmp_path / ".env").write_text("EASEL_MAX_BATCH=\nEASEL_GUILD_ID=\n")
    s = Settings.load(tmp_path / ".env")
    assert s.max_batch == Settings().max_batch and s.guild_id is None


def test_the_model_side_reads_the_same_settings_without_the_bot(tmp_path, clean_env):
    """`python -m models` reads EASEL_CACHE_DIR from .env too, and never imports the bot or discord.py."""
    (tmp_path / ".env").write_text(f"EASEL_CACHE_DIR={tmp_path / 'cache'}\nEASEL_COOLDOWN_S=3\n")
    code = ("import sys, models.cli; from models import settings; print(settings.configured_cache_dir()); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'bot', 'discord'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.split("\n")[:2] == [str(tmp_path / "cache"), "[]"]


@pytest.mark.parametrize("url", ["https://cdn.discordapp.com/attachments/1/2/cat.png?ex=1&is=2&hm=3",
                                 "https://media.discordapp.net/attachments/1/2/cat.png"])
def test_discord_cdn_urls_are_allowed(url):
    check_url(url, Settings().attachment_hosts)


@pytest.mark.parametrize("url, hosts", [
    ("https://evil.example/cat.png", Settings().attachment_hosts),
    ("http://cdn.discordapp.com/attachments/1/2/cat.png", Settings().attachment_hosts),  # not https
    ("https://cdn.discordapp.com.evil.example/cat.png", Settings().attachment_hosts),
    ("http://10.0.0.5:9000/attachments/1/2/cat.png", ("10.0.0.5:9000",)),  # plain http only on loopback
    ("http://127.0.0.1:9001/attachments/1/2/cat.png", ("127.0.0.1:9000",)),  # another port
])
def test_other_hosts_and_plain_http_are_refused(url, hosts):
    with pytest.raises(DownloadError):
        check_url(url, hosts)


def test_cooldown_and_in_flight_caps():
    now = [100.0]
    limiter = Limiter(cooldown_s=10, per_user=2, clock=lambda: now[0])
    first = limiter.acquire(1)
    with pytest.raises(LimitError, match="try again in 10 s"):
        limiter.acquire(1)
    now[0] += 10
    second = limiter.acquire(1)
    now[0] += 10
    with pytest.raises(LimitError, match="already have 2 requests running"):
        limiter.acquire(1)
    others = [limiter.acquire(user) for user in range(2, 30)]  # a busy server: nobody else is refused at the door
    first.release()
    first.release()  # releasing twice must not free a second slot
    limiter.acquire(1)
    now[0] += 10
    with pytest.raises(LimitError, match="already have 2 requests running"):
        limiter.acquire(1)
    second.release()
    assert limiter.in_flight() == 1 + len(others)


@pytest.mark.parametrize("progress, text", [
    (Progress("queued", 0), "You're next in line."),
    (Progress("queued", 1, eta_s=12.4), "1 request ahead of you (about 12 s)."),
    (Progress("queued", 5), "5 requests ahead of you."),
    (Progress("running", fraction=0.42), "Painting… 42%"),
    (Progress("running", fraction=0.0), "Painting…"),
])
def test_progress_texts(progress, text):
    assert progress_text("stylize", progress).endswith(text)


def test_the_names_any_harness_uses_to_start_the_bot(clean_env):
    assert Settings().discord_api_base == "https://discord.com/api/v10"
    for name, value in {"DISCORD_TOKEN": "t", "EASEL_DISCORD_API_BASE": "http://127.0.0.1:5/api/v10",
                        "EASEL_ATTACHMENT_HOSTS": "127.0.0.1:5", "EASEL_DEVICE": "cuda:0"}.items():
        clean_env.setenv(name, value)
    s = Settings.load(None)
    assert (s.token.get_secret_value(), s.discord_api_base, s.attachment_hosts, s.device) == ("t", "http://127.0.0.1:5/api/v10", ("127.0.0.1:5",), "cuda:0")


@pytest.mark.parametrize("cog, command", [(Stylize, "stylize"), (Dream, "dream"), (Fix, "fix")])
def test_slash_commands_are_built_from_the_tasks_option_declarations(cog, command):
    """Discord's ranges, defaults and descriptions are the task's own: one declaration for both."""
    declared = {o.name: o for o in TASKS[command].options}
    names = {"size": "max_side", "preset": "presets"}
    params = getattr(cog, command).parameters
    checked = 0
    for param in params:
        option = declared.get(names.get(param.name, param.name))
        if option is None:
            continue  # attachments
        checked += 1
        assert param.description == option.help() and len(option.help()) <= 100  # Discord's limit
        assert param.required is False and (param.default == option.default or option.default is None)
        if option.lo is not None:
            assert (param.min_value, param.max_value) == (option.lo, option.hi)
    assert checked >= 1
