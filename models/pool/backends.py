"""The pool EASEL_BACKEND names: this machine's devices, or a Ray Serve application."""

from __future__ import annotations

from models.errors import SettingsError
from models.pool.base import Pool
from models.pool.config import PoolConfig, RayConfig
from models.pool.local import InferencePool


def make_pool(backend: str, config: PoolConfig, ray_config: RayConfig) -> Pool:
    """`backend` "local" or "ray"; Ray is imported only when it is asked for."""
    if backend == "local":
        return InferencePool(config)
    try:
        from models.pool.ray_serve import RayPool
    except ImportError:
        raise SettingsError("EASEL_BACKEND=ray needs Ray: pip install 'easel[ray]' (or -e '.[ray]').") from None
    return RayPool(config, ray_config)
