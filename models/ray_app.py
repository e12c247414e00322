"""The Ray Serve application as Serve builds it from a config file or KubeRay's RayService
(`import_path: models.ray_app:app`): the pool's deployment, configured from the EASEL_*
environment. It lives above the pool, beside the command line, because it reads the settings."""

from __future__ import annotations

from ray import serve

from models.pool.ray_serve import application
from models.settings import ModelSettings


def app(args: dict[str, str]) -> serve.Application:
    """The application from the EASEL_* environment; `args` (Serve's) is unused."""
    settings = ModelSettings.load(None)
    return application(settings.pool_config(), settings.ray_config())
