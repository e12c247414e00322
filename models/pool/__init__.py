"""The inference pool, in pieces with one job each.

    config.py    PoolConfig: plain values, the defaults the settings take
    devices.py   which devices, and process tuning for them
    queue.py     FairQueue (servers and people served in turn) and the choice of the next batch
    base.py      Pool: the protocol both backends satisfy, and the admission steps they share
    estimate.py  WaitEstimator: queue-wait estimates from measured speeds
    worker.py    Worker: one device's networks and one batch run end to end (OOM recovery, output contract)
    local.py     InferencePool: admission, scheduling and delivery on this machine's devices
    ray_serve.py the same API on Ray Serve: a deployment whose replicas run Worker, and RayPool (needs `.[ray]`)
    backends.py  make_pool: the backend EASEL_BACKEND names

The queue, the estimator and the worker need no event loop and no pool: another front end
(a Ray Serve replica) can reuse them.
"""

from models.pool.backends import make_pool
from models.pool.base import Pool
from models.pool.config import PoolConfig, RayConfig
from models.pool.devices import keep_freed_memory, resolve_devices
from models.pool.local import InferencePool

__all__ = ["InferencePool", "Pool", "PoolConfig", "RayConfig", "keep_freed_memory", "make_pool", "resolve_devices"]
