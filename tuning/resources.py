"""How much CPU and GPU each trial asks Ray for: ``plan(...)``, a pure function.

The trap this avoids: Ray places a trial only where *all* its resources fit. With
``{"cpu": 1, "gpu": 0.5}`` on a node of 2 CPUs and 2 GPUs, only two trials fit (CPUs run
out first) and Ray packs both onto GPU 0, leaving GPU 1 idle. So when the CPU share is not
given, it is derived from the number of trials the GPUs can hold: CPUs never limit
concurrency before GPUs do, and trials spread over every GPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from engine.errors import ConfigError

log = logging.getLogger(__name__)


class ResourceError(ConfigError):
    """Resource requests that cannot work on this cluster."""


@dataclass(frozen=True)
class TrialResources:
    cpu: float  # Ray CPU share per trial (may be fractional)
    gpu: float  # Ray GPU share per trial: a fraction below 1, or a whole number
    num_threads: int  # torch CPU threads inside the trial
    concurrent: int  # trials the cluster holds at once

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


def _round_down(value: float) -> float:
    """Whole CPUs when there is at least one, else a share Ray accepts (two decimals)."""
    return float(math.floor(value)) if value >= 1 else math.floor(value * 100) / 100


def _node_cpu_limit(nodes: list[tuple[float, float]] | None, gpus_per_trial: float) -> float:
    """The largest CPU share that still lets every node fill its own GPU slots (or hold one CPU trial)."""
    if not nodes:
        return float("inf")
    if gpus_per_trial <= 0:
        return max(c for c, _ in nodes)
    limits = [c / math.floor(g * _per_gpu(gpus_per_trial) + 1e-9) for c, g in nodes
              if math.floor(g * _per_gpu(gpus_per_trial) + 1e-9) > 0]
    return min(limits, default=float("inf"))


def _per_gpu(gpus_per_trial: float) -> float:
    """Trials per GPU: floor(1/share) for a fraction (a trial never spans two GPUs), 1/n for n GPUs."""
    return math.floor(1 / gpus_per_trial + 1e-9) if gpus_per_trial < 1 else 1 / gpus_per_trial


def plan(cluster_cpus: float, cluster_gpus: float, *, gpus_per_trial: float, cpus_per_trial: float = 0,
         max_concurrent: int = 0, nodes: list[tuple[float, float]] | None = None) -> TrialResources:
    """Size one trial's request. ``cpus_per_trial`` 0 means derive it; ``max_concurrent`` 0 means no cap.

    ``nodes``: (CPUs, GPUs) of each node of a cluster. A trial runs on one node, so the derived
    CPU share must also fit the GPU slots of the node with the fewest CPUs per slot.
    """
    if cluster_cpus <= 0:
        raise ResourceError("the Ray cluster reports no CPUs")
    if gpus_per_trial < 0 or cpus_per_trial < 0:
        raise ResourceError("gpus_per_trial and cpus_per_trial must not be negative")
    if gpus_per_trial > 0:
        if cluster_gpus <= 0:
            raise ResourceError(f"gpus_per_trial={gpus_per_trial} but the Ray cluster has no GPUs; "
                                "use --gpus-per-trial 0 to train on CPUs")
        if gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial):
            raise ResourceError(f"gpus_per_trial={gpus_per_trial}: above 1 it must be a whole number")
        slots = math.floor(int(cluster_gpus) * _per_gpu(gpus_per_trial) + 1e-9)
        if slots == 0:
            raise ResourceError(f"gpus_per_trial={gpus_per_trial} does not fit {cluster_gpus} GPU(s)")
    else:
        slots = math.floor(cluster_cpus / cpus_per_trial) if cpus_per_trial else math.floor(cluster_cpus)
    slots = max(1, slots)
    if max_concurrent:
        if gpus_per_trial > 0 and max_concurrent * gpus_per_trial < cluster_gpus:
            log.warning("max_concurrent=%d trials of %g GPU leave part of the %g GPU(s) idle; "
                        "raise --gpus-per-trial or --max-concurrent", max_concurrent, gpus_per_trial, cluster_gpus)
        slots = min(slots, max_concurrent)

    cpu = cpus_per_trial or _round_down(min(cluster_cpus / slots, _node_cpu_limit(nodes, gpus_per_trial)))
    if cpus_per_trial and math.floor(cluster_cpus / cpus_per_trial + 1e-9) < slots:
        log.warning("cpus_per_trial=%g lets only %d trial(s) run at once, fewer than the %d the GPUs hold; "
                    "Ray will pack them onto the first GPU(s)", cpus_per_trial,
                    math.floor(cluster_cpus / cpus_per_trial + 1e-9), slots)
        slots = max(1, math.floor(cluster_cpus / cpus_per_trial + 1e-9))
    return TrialResources(cpu=cpu, gpu=float(gpus_per_trial), num_threads=max(1, math.floor(cpu)), concurrent=slots)
