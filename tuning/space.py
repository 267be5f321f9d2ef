"""Search spaces: YAML files that name a base preset and the engine config keys to search.

A space file (``tuning/spaces/<name>.yaml``, or any path) looks like::

    description: what this space is for
    base_preset: cpu-quick          # an engine preset (engine/presets/*.json)
    fixed: {epochs: 5}              # overrides applied to every trial, not searched
    params:                         # searched keys: engine config keys, nothing translated
      lr: {loguniform: [0.001, 0.004]}
      batch_size: {choice: [16, 32]}
      model: {grid: [densenet121, densenet169]}
    search: optuna                  # default search: random | grid | optuna
    scheduler: asha                 # default scheduler: asha | fifo
    num_samples: 4
    max_concurrent_trials: 2
    gpus_per_trial: 0.5             # used only when the cluster has GPUs
    grace_period: 2                 # ASHA: epochs before a trial can be cut
    reduction_factor: 2             # ASHA: keep the best 1/reduction_factor at each rung
    max_failures: 1                 # retries of a crashing trial
    time_budget_s: 540              # after this many seconds a trial stops at its next epoch (0: no budget)
    metric: val_macro_f1            # the objective (default); or two, optimised together by Optuna:
    mode: max                       #   metric: [val_macro_f1, val_acc_without_cells], mode: [max, min]

Distributions: ``choice``, ``grid`` (every value, in turn), ``uniform`` and ``loguniform``
([low, high]) and ``randint`` ([low, high], both included). Keys are checked against
``engine.config.Config`` when the file is read; values are checked per trial by
``build_config``, so a value the engine rejects shows up as an errored trial.

Objectives (``metric``, ``mode``): one metric, or two optimised together (multi-objective Optuna TPE,
``search: optuna``). The first is one reported every epoch (tuning.layout.EPOCH_METRICS), which ASHA
cuts on; the second may be a context-probe metric measured once at the trial's end
(tuning.layout.PROBE_METRICS, e.g. ``val_acc_without_cells``). ``check_objectives`` refuses the
combinations that cannot work, with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.config import Config, ConfigError, build_config

from .layout import EPOCH_METRICS, PROBE_METRICS

SPACE_DIR = Path(__file__).parent / "spaces"
SEARCHES = ("random", "grid", "optuna")
SCHEDULERS = ("asha", "fifo")
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
SETTINGS = ("search", "scheduler", "num_samples", "max_concurrent_trials", "gpus_per_trial",
            "cpus_per_trial", "grace_period", "reduction_factor", "max_failures", "time_budget_s")
TOP_LEVEL = ("description", "base_preset", "fixed", "params", "metric", "mode", *SETTINGS)
MODES = ("max", "min")
MAX_OBJECTIVES = 2


class SpaceError(ConfigError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Space:
    name: str
    path: Path
    base_preset: str
    params: dict[str, dict[str, Any]]  # key -> {distribution: argument}
    fixed: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    search: str = "random"
    scheduler: str = "asha"
    num_samples: int = 4
    max_concurrent_trials: int = 0  # 0 = as many as the resources allow
    gpus_per_trial: float = 1.0
    cpus_per_trial: float = 0.0  # 0 = sized from the cluster (see resources.py)
    grace_period: int = 1
    reduction_factor: int = 2
    max_failures: int = 1
    time_budget_s: float = 0.0  # 0 = none; see tuning/budget.py
    metrics: tuple[str, ...] = ("val_macro_f1",)  # the objectives, in order: the first is ASHA's
    modes: tuple[str, ...] = ("max",)

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def base_config(self) -> Config:
        """The preset plus the fixed overrides, i.e. everything a trial does not sample."""
        return build_config(self.base_preset, self.fixed)

    def max_epochs(self) -> int:
        """The longest a trial can train: ASHA's ``max_t``."""
        spec = self.params.get("epochs")
        if spec is None:
            return self.base_config().epochs
        kind, arg = next(iter(spec.items()))
        return int(max(arg) if kind in ("choice", "grid") else arg[1])

    def grid_size(self, search: str) -> int:
        """How many trials one sample of the space expands to (grid values multiply)."""
        if search == "optuna":
            return 1
        kinds = ("grid", "choice") if search == "grid" else ("grid",)
        return math.prod(len(arg) for spec in self.params.values() for kind, arg in spec.items() if kind in kinds)

    def image_sizes(self) -> list[int]:
        """The image sizes trials will ask for, when they are known in advance (to warm the cache)."""
        spec = self.params.get("image_size")
        if spec is None:
            return [self.base_config().image_size]
        kind, arg = next(iter(spec.items()))
        return sorted({int(v) for v in arg}) if kind in ("choice", "grid") else []

    def views(self) -> list[str]:
        """The views (engine.cells) trials will ask for: "field", "cells" or both."""
        spec = self.params.get("view")
        if spec is None:
            return [self.base_config().view]
        return sorted({str(v) for v in next(iter(spec.values()))})


def space_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return SPACE_DIR / f"{name_or_path}.yaml"


def list_spaces() -> list[str]:
    return sorted(p.stem for p in SPACE_DIR.glob("*.yaml"))


def load_space(name_or_path: str | Path) -> Space:
    """Read and validate a space file; every problem raises SpaceError naming the file."""
    path = space_path(name_or_path)
    if not path.is_file():
        raise SpaceError(f"search space {str(name_or_path)!r} not found ({path}); "
                         f"available: {', '.join(list_spaces())}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise SpaceError(f"{path}: a search space must be a YAML mapping")

    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise SpaceError(f"{path}: unknown key {unknown[0]!r}; valid top-level keys: {', '.join(TOP_LEVEL)}")
    if "base_preset" not in data:
        raise SpaceError(f"{path}: base_preset is required (one of engine/presets/*.json)")
    fixed = data.get("fixed") or {}
    params = data.get("params") or {}
    if not isinstance(fixed, dict) or not isinstance(params, dict):
        raise SpaceError(f"{path}: fixed and params must be mappings of engine config keys")
    if not params:
        raise SpaceError(f"{path}: params is empty; name at least one engine config key to search")

    config_keys = {f.name for f in dataclasses.fields(Config)}
    for section, keys in (("params", params), ("fixed", fixed)):
        for key in keys:
            if key not in config_keys:
                raise SpaceError(f"{path}: {section}.{key}: unknown engine config key {key!r}; "
                                 f"valid keys: {', '.join(sorted(config_keys))}")
    both = sorted(set(fixed) & set(params))
    if both:
        raise SpaceError(f"{path}: {both[0]!r} is both fixed and searched; keep it in one place")
    checked = {key: _check_distribution(path, key, spec) for key, spec in params.items()}

    settings = {key: data[key] for key in SETTINGS if key in data}
    metrics, modes = _check_objectives(path, data)
    try:
        space = Space(name=path.stem, path=path.resolve(), base_preset=str(data["base_preset"]),
                      params=checked, fixed=dict(fixed), description=str(data.get("description", "")),
                      metrics=metrics, modes=modes, **settings)
    except TypeError as exc:
        raise SpaceError(f"{path}: {exc}") from exc
    _check_settings(path, space)
    # Build one representative config (the first value of each key) so that a wrong preset
    # name or a value of the wrong type fails now, with the file's name, not inside a trial.
    try:
        build_config(space.base_preset, {**space.fixed, **{k: first_value(s) for k, s in checked.items()}})
    except ConfigError as exc:
        raise SpaceError(f"{path}: {exc}") from exc
    return space


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def _check_objectives(path: Path, data: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The space's objectives: ``metric`` and ``mode``, each a name or a list of up to MAX_OBJECTIVES names."""
    metrics = _as_tuple(data.get("metric", "val_macro_f1"))
    modes = _as_tuple(data.get("mode", ["max"] * len(metrics) if "metric" in data else "max"))
    known = (*EPOCH_METRICS, *PROBE_METRICS)
    if not metrics or len(metrics) > MAX_OBJECTIVES:
        raise SpaceError(f"{path}: metric names one objective or a list of {MAX_OBJECTIVES}, got {data['metric']!r}")
    for name in metrics:
        if not isinstance(name, str) or name not in known:
            raise SpaceError(f"{path}: metric {name!r} is not one a trial reports; use one of {', '.join(known)}")
    if len(set(metrics)) != len(metrics):
        raise SpaceError(f"{path}: metric names {metrics[0]!r} twice")
    if len(modes) != len(metrics) or any(m not in MODES for m in modes):
        raise SpaceError(f"{path}: mode must give max or min for each metric ({len(metrics)}), got "
                         f"{data.get('mode')!r}")
    if metrics[0] not in EPOCH_METRICS:
        raise SpaceError(f"{path}: the first metric, {metrics[0]!r}, is measured only once at a trial's end; the "
                         f"first objective must be one reported every epoch ({', '.join(EPOCH_METRICS)}), which "
                         f"ASHA and Optuna follow while the trial trains; name {metrics[0]!r} second")
    return metrics, modes


def check_objectives(space: Space, search: str, scheduler: str) -> None:
    """Refuse, with the reason, objectives that the chosen search and scheduler cannot pursue.

    Two objectives need Optuna (random and grid search never look at results) and are optimised together by
    its multi-objective TPE. ASHA cuts trials on the first objective alone (its rungs come every few epochs,
    long before the probe is measured); a trial it cuts carries no probe and is told to Optuna as pruned.
    """
    if not space.multi_objective:
        return
    if search != "optuna":
        raise SpaceError(f"{space.path}: two objectives ({', '.join(space.metrics)}) need search: optuna; {search} "
                         "search samples without looking at results, so a second objective would change nothing "
                         "(the finish step's recommendation weighs the probe for every sweep anyway)")


def _check_distribution(path: Path, key: str, spec: Any) -> dict[str, Any]:
    where = f"{path}: params.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(f"{where}: expected one of {{{', '.join(d + ': ...' for d in DISTRIBUTIONS)}}}, "
                         f"got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise SpaceError(f"{where}: unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(arg, list) or not arg:
        raise SpaceError(f"{where}: {kind} takes a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
        if len(arg) != 2 or not numeric or arg[0] >= arg[1]:
            raise SpaceError(f"{where}: {kind} takes [low, high] with low < high, got {arg!r}")
        if kind == "loguniform" and arg[0] <= 0:
            raise SpaceError(f"{where}: loguniform needs a positive low bound, got {arg[0]!r}")
        if kind == "randint" and not all(isinstance(v, int) for v in arg):
            raise SpaceError(f"{where}: randint takes integer bounds, got {arg!r}")
    return {kind: arg}


def _check_settings(path: Path, space: Space) -> None:
    checks = [
        (space.search in SEARCHES, f"search must be one of {SEARCHES}"),
        (space.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}"),
        (isinstance(space.num_samples, int) and space.num_samples >= 1, "num_samples must be an integer >= 1"),
        (isinstance(space.max_concurrent_trials, int) and space.max_concurrent_trials >= 0,
         "max_concurrent_trials must be an integer >= 0"),
        (isinstance(space.gpus_per_trial, (int, float)) and space.gpus_per_trial >= 0, "gpus_per_trial must be >= 0"),
        (isinstance(space.cpus_per_trial, (int, float)) and space.cpus_per_trial >= 0, "cpus_per_trial must be >= 0"),
        (isinstance(space.grace_period, int) and space.grace_period >= 1, "grace_period must be an integer >= 1"),
        (isinstance(space.reduction_factor, int) and space.reduction_factor >= 2,
         "reduction_factor must be an integer >= 2"),
        (isinstance(space.max_failures, int) and space.max_failures >= 0, "max_failures must be an integer >= 0"),
        (isinstance(space.time_budget_s, (int, float)) and not isinstance(space.time_budget_s, bool)
         and space.time_budget_s >= 0, "time_budget_s must be a number of seconds >= 0 (0: no budget)"),
    ]
    for ok, message in checks:
        if not ok:
            raise SpaceError(f"{path}: {message}")


def first_value(spec: dict[str, Any]) -> Any:
    return next(iter(spec.values()))[0]


def param_space(space: Space, search: str) -> dict[str, Any]:
    """The Ray Tune search space of ``space`` for ``search``.

    random: ``choice`` samples, ``grid`` enumerates. grid: ``choice`` enumerates too.
    optuna: TPE cannot enumerate, so ``grid`` becomes a ``choice``.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.params.items():
        kind, arg = next(iter(spec.items()))
        if (kind == "grid" and search == "optuna") or (kind == "choice" and search != "grid"):
            out[key] = tune.choice(arg)
        elif kind in ("grid", "choice"):
            out[key] = tune.grid_search(arg)
        elif kind == "uniform":
            out[key] = tune.uniform(*arg)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*arg)
        else:
            out[key] = tune.randint(arg[0], arg[1] + 1)  # Ray's upper bound is exclusive
    return out
