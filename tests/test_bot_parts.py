"""Mechanics of the Discord layer's small parts: settings, the download guard, fairness limits, texts."""

from __future__ import annotations

import pytest

from bot.attachments import DownloadError, check_url
from bot.limits import LimitError, Limiter
from bot.replies import progress_text
from bot.settings import Settings, SettingsError
from models.jobs import Progress


def test_settings_from_env_file_and_environment(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text('# comment\nexport DISCORD_TOKEN="file-token"\nEASEL_DEVICE=cuda:1\nEASEL_COOLDOWN_S=2.5\n'
                        "EASEL_ATTACHMENT_HOSTS=127.0.0.1:9000, cdn.example.org\nEASEL_PRELOAD=no\n")
    s = Settings.from_env(env={"EASEL_DEVICE": "cpu", "EASEL_GUILD_ID": "42"}, env_file=env_file)
    assert (s.token, s.device, s.cooldown_s, s.guild_id, s.preload) == ("file-token", "cpu", 2.5, 42, False)
    assert s.attachment_hosts == ("127.0.0.1:9000", "cdn.example.org")
    assert s.upload_limit == 10 * 2**20 and s.http_port is None


def test_the_token_never_shows_in_settings_repr():
    assert "sekrit" not in repr(Settings(token="sekrit")) and "sekrit" not in str(Settings(token="sekrit"))


@pytest.mark.parametrize("env, words", [({"EASEL_COOLDOWN": "3"}, "Unknown setting EASEL_COOLDOWN"),
                                        ({"EASEL_MAX_BATCH": "lots"}, "EASEL_MAX_BATCH='lots' is not valid"),
                                        ({"EASEL_PRELOAD": "maybe"}, "EASEL_PRELOAD")])
def test_bad_settings_name_the_variable(env, words):
    with pytest.raises(SettingsError, match=words):
        Settings.from_env(env=env, env_file=None)


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
    limiter = Limiter(cooldown_s=10, per_user=2, per_guild=3, clock=lambda: now[0])
    first = limiter.acquire(1, 7)
    with pytest.raises(LimitError, match="try again in 10 s"):
        limiter.acquire(1, 7)
    now[0] += 10
    second = limiter.acquire(1, 7)
    now[0] += 10
    with pytest.raises(LimitError, match="already have 2 requests running"):
        limiter.acquire(1, 7)
    limiter.acquire(2, 7)
    with pytest.raises(LimitError, match="This server"):
        limiter.acquire(3, 7)
    first.release()
    first.release()  # releasing twice must not free a second slot
    limiter.acquire(3, 7)
    second.release()
    assert limiter.in_flight() == 2


@pytest.mark.parametrize("progress, text", [
    (Progress("queued", 0), "You're next in line."),
    (Progress("queued", 1, eta_s=12.4), "1 request ahead of you (about 12 s)."),
    (Progress("queued", 5), "5 requests ahead of you."),
    (Progress("running", fraction=0.42), "Painting… 42%"),
    (Progress("running", fraction=0.0), "Painting…"),
])
def test_progress_texts(progress, text):
    assert progress_text("stylize", progress).endswith(text)


def test_the_names_any_harness_uses_to_start_the_bot():
    s = Settings.from_env(env={"DISCORD_TOKEN": "t", "EASEL_DISCORD_API_BASE": "http://127.0.0.1:5/api/v10",
                               "EASEL_ATTACHMENT_HOSTS": "127.0.0.1:5", "EASEL_DEVICE": "cuda:0"}, env_file=None)
    assert (s.token, s.discord_api_base, s.attachment_hosts, s.device) == ("t", "http://127.0.0.1:5/api/v10", ("127.0.0.1:5",), "cuda:0")
    assert Settings().discord_api_base == "https://discord.com/api/v10"
