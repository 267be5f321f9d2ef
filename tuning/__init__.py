"""Hyperparameter sweeps of the engine with Ray Tune: ``python -m tuning sweep ...``.

Modules, in the order a sweep uses them:

* ``space``     reads and validates a search-space YAML (``tuning/spaces/*.yaml``);
* ``resources`` sizes CPUs/GPUs per trial so that GPUs, not CPUs, limit concurrency;
* ``trainable`` the Ray Tune function: one engine run folder per trial;
* ``summary``   summary.csv and trial.json, kept current by a ``ray.tune.Callback``;
* ``driver``    one driver per sweep folder (sweep.lock) and sweep.json with its heartbeat;
* ``liveness``  whether a sweep's driver still runs (shared with the dashboard);
* ``sweep``     ray.init, Tuner (or Tuner.restore), ray.shutdown;
* ``searchers`` Optuna TPE for one or two objectives (a trial without its second objective is pruned);
* ``finish``    evaluates and explains the best trial, writes best.json, prints a table; names the
                recommended trial (recommended.json) and evaluates it too;
* ``recommend`` the recommendation rule and the Pareto front, pure functions (shared with the dashboard);
* ``cli``       the command line.

Nothing here runs at import time, and Ray is imported only where a sweep needs it.
"""
