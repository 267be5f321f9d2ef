"""A local two-node Ray cluster (head + one worker node, one CPU each) in a process of its own.

``python -m tests.support.ray_cluster`` starts it with ``ray.cluster_utils.Cluster``, prints one
JSON line ``{"address", "head", "worker"}`` (the GCS address and both node ids), then obeys lines
on stdin: ``kill-worker`` kills every process of the worker node at once (as a lost machine
would) and answers ``killed``; ``stop`` or the end of stdin shuts the cluster down.

Its own process keeps Ray's per-process state (token authentication mode, the GCS client) out
of the test process. The environment decides authentication, as for ``ray start``.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from ray.cluster_utils import Cluster

    # Dead nodes noticed within seconds instead of Ray's default ~30 s, so the test stays short.
    system = {"health_check_period_ms": 500, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 2}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "_system_config": system})
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address, "head": cluster.head_node.node_id,
                          "worker": worker.node_id}), flush=True)
        for line in sys.stdin:
            if line.strip() == "kill-worker":
                cluster.remove_node(worker, allow_graceful=False)
                print("killed", flush=True)
            elif line.strip() == "stop":
                break
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
