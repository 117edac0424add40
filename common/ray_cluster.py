"""Joining Ray, for every stage that submits work to it (curation's shard checks, the Ray engine's
replicas): ``RAY_ADDRESS``'s cluster, with this checkout's packages shipped to its nodes, else a
local cluster this process starts. Ray itself is imported only here and only when asked for."""
from __future__ import annotations

import math
import os
from pathlib import Path

from common.errors import MixdistillError, first_line

ROOT = Path(__file__).resolve().parents[1]
# A local cluster's logical CPUs: MIXDISTILL_RAY_NUM_CPUS, else the machine's cores, or more when
# the caller's actors need more (they then share the cores instead of waiting forever for a slot).
NUM_CPUS_ENV = "MIXDISTILL_RAY_NUM_CPUS"
INSTALL_HINT = "Ray is not installed: pip install 'mixdistill[cluster]'"

_started_local = False          # whether this process started the Ray it is connected to


class ClusterError(MixdistillError, RuntimeError):
    """Ray is missing or its cluster cannot be reached."""


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(INSTALL_HINT) from exc
    return ray


def connect(packages: tuple[str, ...], *, min_cpus: float = 0, log_to_driver: bool = True) -> bool:
    """Connect once per process; True when the cluster is a local one this process started (nothing
    joins it later, so what it lacks now it lacks for good). ``packages`` are the top-level folders
    of this checkout the nodes of a real cluster import (Ray ``py_modules``): they run this code, not
    whatever version they may have installed."""
    global _started_local
    ray = import_ray()
    if ray.is_initialized():
        return _started_local
    address = os.environ.get("RAY_ADDRESS")
    if address:
        try:
            ray.init(address=address, runtime_env={"py_modules": [str(ROOT / name) for name in packages]},
                     log_to_driver=log_to_driver)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"cannot join the Ray cluster at RAY_ADDRESS={address}: {first_line(exc)}") from exc
        _started_local = False
        return False
    env = os.environ.get(NUM_CPUS_ENV, "").strip()
    if env and not (env.isdigit() and int(env) > 0):
        raise ClusterError(f"{NUM_CPUS_ENV}={env!r}: must be a positive whole number of CPUs")
    cpus = int(env) if env else max(os.cpu_count() or 1, math.ceil(min_cpus))
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=log_to_driver, configure_logging=False)
    _started_local = True
    return True
