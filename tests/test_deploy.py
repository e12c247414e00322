"""deploy/: the files parse and name real paths; the Dockerfile's install steps work in a fresh venv."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from bot.app import REPLY_GRACE_S
from bot.settings import Settings
from models import weights

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SHUTDOWN_S = Settings().shutdown_grace_s + REPLY_GRACE_S  # the longest a clean shutdown takes


def install_defaults() -> dict[str, str]:
    """The defaults deploy/install.sh uses, read from the script itself."""
    text = (DEPLOY / "install.sh").read_text()
    return {"venv": re.search(r"EASEL_VENV:-([^}]+)}", text)[1], "cache": re.search(r"EASEL_CACHE_DIR:-([^}]+)}", text)[1]}


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage (keyed by stage name), with continuation lines joined."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip()
            stages[current] = [("FROM", rest.split(" AS ")[0].strip())]
        else:
            stages[current].append((word, rest))
    return stages


def test_compose_reserves_a_gpu_and_keeps_weights_in_a_volume():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    stages = dockerfile_stages()
    cache = install_defaults()["cache"]
    for name, variant in (("easel", "gpu"), ("easel-cpu", "cpu")):
        service = compose["services"][name]
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        assert build["args"] == {"VARIANT": variant} and f"base-{variant}" in stages
        assert service["env_file"] == ".env" and (DEPLOY / ".env.example").is_file()
        assert f"easel-cache:{cache}" in service["volumes"] and "easel-cache" in compose["volumes"]
        assert service["restart"] == "unless-stopped"
        assert int(service["stop_grace_period"].rstrip("s")) > SHUTDOWN_S
        assert "easel weights fetch" in service["command"][-1] and "easel run" in service["command"][-1]
    device = compose["services"]["easel"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_env_example_names_only_real_settings():
    env = Settings.load(DEPLOY / ".env.example")
    assert env.device == "auto" and env.upload_limit_mb == 10 and env.token.get_secret_value() == ""


def test_dockerfile_builds_with_the_install_script_and_runs_unprivileged_with_a_health_check():
    stages = dockerfile_stages()
    defaults = install_defaults()
    assert ("ARG", "VARIANT=gpu") in stages[""]
    assert stages["build"][0] == ("FROM", "base-${VARIANT}") and stages["runtime"][0] == ("FROM", "base-${VARIANT}")
    build = stages["build"]
    assert ("COPY", ". /src") in build and any(w == "RUN" and "sh /src/deploy/install.sh" in r for w, r in build)
    runtime = dict(stages["runtime"])
    copies = [r for w, r in stages["runtime"] if w == "COPY"]
    assert any(f"--from=build {defaults['venv']}" in c for c in copies)
    assert any(f"--from=build --chown=easel:easel {defaults['cache']}" in c for c in copies)
    assert runtime["USER"] == "easel" and "/healthz" in runtime["HEALTHCHECK"] and "EASEL_HTTP_PORT=8080" in runtime["ENV"]
    assert f"EASEL_CACHE_DIR={defaults['cache']}" in runtime["ENV"] and runtime["CMD"] == '["easel", "run"]'
    assert "python3" in dict(stages["base-gpu"])["RUN"]
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and "**/.env" in ignored  # the token never enters the build context


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd unit syntax: sections, and keys that may repeat (Environment=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_points_at_the_install_layout():
    unit = read_unit(DEPLOY / "easel.service")
    service = {k: v[-1] for k, v in unit["Service"].items()}
    defaults = install_defaults()
    assert shlex.split(service["ExecStart"]) == [f"{defaults['venv']}/bin/easel", "run"]
    assert service["WorkingDirectory"] == str(Path(defaults["venv"]).parent)
    assert f"EASEL_CACHE_DIR={defaults['cache']}" in unit["Service"]["Environment"]
    assert service["ReadWritePaths"] == defaults["cache"]
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) > SHUTDOWN_S
    assert service["EnvironmentFile"] == "/etc/easel/easel.env" and service["User"] == "easel"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.slow
def test_install_script_works_in_a_fresh_venv(tmp_path, real_weights):
    """What the Dockerfile runs, for real: a new venv, the pinned torch, Easel, and its weights."""
    env = {**os.environ, "EASEL_VENV": str(tmp_path / "venv"), "EASEL_CACHE_DIR": str(tmp_path / "cache"),
           "EASEL_SOURCE": str(ROOT), "EASEL_WHEELHOUSE": str(real_weights / "wheels"),
           "TORCH_SPEC": f"torch=={torch.__version__.split('+')[0]} torchvision=={torchvision.__version__.split('+')[0]}",
           "PYTHON": sys.executable.replace(sys.prefix, sys.base_prefix) if sys.prefix != sys.base_prefix else sys.executable}
    done = subprocess.run(["sh", str(DEPLOY / "install.sh")], env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(" ready\n") + done.stdout.count("ready\n") >= len(weights.REGISTRY)
    easel = tmp_path / "venv" / "bin" / "easel"
    out = tmp_path / "faces.png"
    made = subprocess.run([str(easel), "dream", "-n", "1", "--seed", "3", "-o", str(out), "--device", "cpu"],
                          env={**env, "EASEL_WHEELHOUSE": ""}, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-2000:]
    assert out.stat().st_size > 1000


def test_the_ray_compose_profile_runs_a_head_a_gpu_worker_and_a_bot_on_one_image():
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    head, worker, bot = services["ray-head"], services["ray-worker"], services["easel-bot"]
    for service in (head, worker, bot):
        assert service["profiles"] == ["ray"] and service["image"] == "easel:ray"
        assert service["build"]["args"] == {"VARIANT": "gpu", "EXTRAS": "ray"}
        assert service["environment"]["EASEL_BACKEND"] == "ray" and service["environment"]["RAY_AUTH_TOKEN"]
    assert "ray start --head --port=6379" in head["command"][-1] and "easel serve" in head["command"][-1]
    assert head["environment"]["EASEL_RAY_ADDRESS"] == "127.0.0.1:6379"
    assert "--address=ray-head:6379" in worker["command"][-1]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert bot["command"] == ["easel", "run"] and bot["environment"]["EASEL_RAY_ADDRESS"] == "ray-head:6379"
    assert int(bot["stop_grace_period"].rstrip("s")) > SHUTDOWN_S
    assert ("ARG", 'EXTRAS=""') in dockerfile_stages()["build"]
    names = set(Settings.variables())
    for service in (head, worker, bot):
        assert {k for k in service["environment"] if k.startswith("EASEL_")} <= names


def test_the_kuberay_manifest_serves_our_application_and_points_the_bot_at_its_head():
    service, bot = yaml.safe_load_all((DEPLOY / "kuberay.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    (application,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    module, _, builder = application["import_path"].partition(":")
    assert module == "models.ray_app" and builder == "app"
    assert (ROOT / (module.replace(".", "/") + ".py")).read_text().count(f"\ndef {builder}(") == 1
    names = set(Settings.variables())
    cluster = service["spec"]["rayClusterConfig"]
    head_env = {e["name"] for e in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert head_env <= names
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    container = bot["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EASEL_BACKEND"] == "ray" and env["EASEL_RAY_ADDRESS"] == f"{service['metadata']['name']}-head-svc:6379"
    assert {k for k in env if k.startswith("EASEL_")} <= names and "DISCORD_TOKEN" in env
    assert bot["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > SHUTDOWN_S
