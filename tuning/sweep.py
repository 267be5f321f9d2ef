"""One sweep, start to end: ``run_sweep(SweepOptions(...))``.

1. resolve the sweep folder, claim it (driver.py: one driver per folder, refused while another
   runs it) and its settings (a resumed sweep reuses the recorded ones); sweep.json records the
   driver and its heartbeat from here on;
2. warm the image cache for the sizes the space uses (before Ray: no forking under Ray);
3. ``ray.init`` on loopback without dashboard, or join ``--address``;
4. size each trial's CPU/GPU request (resources.py) and run ``Tuner.fit`` (or
   ``Tuner.restore`` with ``--resume``), ``SummaryCallback`` keeping summary.csv current;
5. ``ray.shutdown()`` on every path out, then the finish step (finish.py) once all trials ended.

With MLflow tracking (``--mlflow`` or MLFLOW_TRACKING_URI), the sweep is a parent MLflow run opened
before the trials (its settings as params); each trial nests its own run under it (trainable.py), and
at the end every trial folder is copied once more with its final status, and the parent gets the sweep's
files and its best trial's scores (``track_sweep_end``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import runs
from engine.errors import DamagedFileError, Interrupted
from engine.runs import MANIFEST

from . import layout
from .driver import SweepError, SweepRecord, claim
from .finish import read_summary
from .space import Space, SpaceError, check_objectives, load_space, param_space
from .trainable import TrialSetup, train_trial, trial_dir, update_trial_json

if TYPE_CHECKING:
    from engine.tracking import FolderRun

log = logging.getLogger(__name__)

METRIC, MODE = "val_macro_f1", "max"  # the default objective; a space may name others (Space.metrics)


@dataclass(frozen=True)
class SweepOptions:
    """The command line, as data. None means: the space's setting (or, on --resume, the recorded one)."""

    space: str
    data: Path | None = None
    out: Path = Path("outputs/sweeps")
    name: str | None = None
    num_samples: int | None = None
    max_concurrent: int | None = None
    search: str | None = None
    scheduler: str | None = None
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    time_budget: float | None = None  # seconds; None: the space's time_budget_s
    resume: bool = False
    address: str | None = None
    storage: str | None = None
    explain: bool = True
    num_cpus: int | None = None  # local Ray only: CPUs it may use (default: all)
    num_gpus: int | None = None  # local Ray only: GPUs it advertises (default: detected)
    mlflow: str | None = None  # MLflow tracking URI (default: $MLFLOW_TRACKING_URI; neither: no tracking)


@dataclass(frozen=True)
class SweepResult:
    sweep_dir: Path
    status: str  # layout.SWEEP_COMPLETE or layout.SWEEP_INTERRUPTED
    best: dict[str, Any] | None


# ----------------------------------------------------------------------------- the folder


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def latest_unfinished(out: Path, space_name: str) -> Path | None:
    """The newest sweep of ``space_name`` in ``out`` that did not complete (for --resume without --name)."""
    candidates = []
    for path in Path(out).glob(f"*/{layout.SWEEP_JSON}"):
        try:
            info = runs.read_json(path)
        except (OSError, DamagedFileError) as exc:
            log.warning("skipping %s: %s", path.parent, exc)
            continue
        if info.get("space") == space_name and info.get("status") != layout.SWEEP_COMPLETE:
            candidates.append((info.get("started_at") or "", path.parent))
    return max(candidates)[1] if candidates else None


def resolve_folder(opts: SweepOptions, space_name: str) -> Path:
    """The sweep's folder. Whether it is free (or, for --resume, not still running) is claim()'s to say,
    under the folder's lock: checked here, two drivers could both find it free."""
    out = Path(opts.out)
    if opts.resume:
        sweep_dir = out / opts.name if opts.name else latest_unfinished(out, space_name)
        if sweep_dir is None or not (sweep_dir / layout.SWEEP_JSON).is_file():
            which = f"named {opts.name!r}" if opts.name else f"of space {space_name!r}"
            raise SweepError(f"--resume: no sweep {which} to resume in {out}")
        return sweep_dir
    return out / (opts.name or f"{space_name}-{time.strftime('%Y%m%d-%H%M%S')}")


def settings(opts: SweepOptions, space: Space) -> dict[str, Any]:
    """The sweep's settings: command line over space file."""
    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return {
        "search": pick(opts.search, space.search),
        "scheduler": pick(opts.scheduler, space.scheduler),
        "num_samples": pick(opts.num_samples, space.num_samples),
        "max_concurrent_trials": pick(opts.max_concurrent, space.max_concurrent_trials),
        "cpus_per_trial": pick(opts.cpus_per_trial, space.cpus_per_trial),
        "time_budget_s": pick(opts.time_budget, space.time_budget_s),
    }


# ----------------------------------------------------------------------------- Ray


def init_ray(opts: SweepOptions) -> None:
    """``ray.init``, keeping the driver's own SIGTERM handling: Ray's would exit at once (status 15), before
    Tune saves its state and the sweep is marked interrupted (tuning/cli.py forwards SIGTERM as Ctrl+C)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main else None
    try:
        _init_ray(opts)
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _init_ray(opts: SweepOptions) -> None:
    import ray

    # Never phone home; set here too, not only in the Makefile, since tests call main() directly.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Trial processes: no stats either, and no per-batch progress bars flooding the driver.
    runtime_env = {"env_vars": {"RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1"}}
    address = opts.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        log.info("joining the Ray cluster at %s", address)
        try:
            ray.init(address=address, runtime_env=runtime_env)
        except (ConnectionError, RuntimeError) as exc:
            refusal = _authentication_error(exc)
            if refusal is None:
                raise
            # Ray never turns token authentication on by itself for an explicit address.
            raise SweepError(
                f"the Ray cluster at {address} refused this driver ({refusal}): it uses token authentication; "
                "export RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                "or ~/.ray/auth_token (see docs/sweeps.md)") from None
    else:
        # A private single-node Ray bound to loopback, without the dashboard web server.
        ray.init(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", runtime_env=runtime_env)


def _authentication_error(exc: BaseException) -> str | None:
    """Why the cluster refused this driver's credentials, if that is what ``exc`` is about; else None.

    Ray 2.60 wraps the refusal in a ConnectionError whose cause, a RuntimeError, carries the
    original AuthenticationError only as text ("InvalidAuthToken: ..."), hence the text search.
    """
    from ray.exceptions import AuthenticationError

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, AuthenticationError):
            return (cause.message.splitlines() or ["authentication failed"])[0]
        if any(mark in str(cause) for mark in ("InvalidAuthToken", "AuthenticationError")):
            return "its authentication token is missing or incorrect"
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def trial_dirname(trial: Any) -> str:
    """Ray's folder of a trial is named by its id alone, like ours in trials/."""
    return trial.trial_id


def objectives(space: Space) -> tuple[str | list[str], str | list[str]]:
    """The space's metric and mode as Ray and sweep.json take them: names for one objective, lists for two."""
    if space.multi_objective:
        return list(space.metrics), list(space.modes)
    return space.metrics[0], space.modes[0]


def make_search(search: str, max_concurrent: int = 0, seed: int = 0, space: Space | None = None) -> Any:
    """The search algorithm, capped at ``max_concurrent`` trials at once (0: no cap).

    The cap is applied here, not with TuneConfig(max_concurrent_trials=...): Ray applies that
    one to Searcher instances only and ignores it for a BasicVariantGenerator (random and grid
    search), warning "requires a Searcher instance". Optuna gets the space's objectives: with two,
    its multi-objective TPE (and TuneConfig names no metric, as Ray requires then).
    """
    if search == "optuna":
        from ray.tune.search import ConcurrencyLimiter

        from .searchers import TrialEndOptunaSearch

        metric, mode = objectives(space) if space is not None else (METRIC, MODE)
        searcher = TrialEndOptunaSearch(metric=metric, mode=mode, seed=seed)
        return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent) if max_concurrent else searcher
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def make_scheduler(scheduler: str, space: Space) -> Any:
    if scheduler == "fifo":
        from ray.tune.schedulers import FIFOScheduler

        return FIFOScheduler()
    from ray.tune.schedulers import ASHAScheduler

    # time_attr "epoch" (reported by the engine), not Ray's iteration counter: a resumed
    # trial continues its epochs even when its last report before a crash was lost.
    max_t = space.max_epochs()
    # With two objectives TuneConfig names no metric (Ray hands the searcher its list), so ASHA is given the
    # first one itself: it is reported every epoch (space.check_objectives), the second only at the end.
    own = {"metric": space.metrics[0], "mode": space.modes[0]} if space.multi_objective else {}
    return ASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=min(space.grace_period, max_t),
                         reduction_factor=space.reduction_factor, **own)


def build_tuner(trainable: Any, space: Space, info: dict[str, Any], sweep_dir: Path, storage: str) -> Any:
    from ray import tune

    from .summary import SummaryCallback

    metric, mode = (None, None) if space.multi_objective else objectives(space)
    return tune.Tuner(
        trainable,
        param_space=param_space(space, info["search"]),
        tune_config=tune.TuneConfig(
            metric=metric, mode=mode, num_samples=info["num_samples"],
            search_alg=make_search(info["search"], info["max_concurrent_trials"] or 0, space=space),
            scheduler=make_scheduler(info["scheduler"], space), trial_dirname_creator=trial_dirname,
            # A trial that ends hands its process to the next one: each fresh process spends seconds of CPU
            # importing torch, torchvision and Ray before it trains. fit() sets its threads and seeds anew.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=info["name"], storage_path=storage,
            failure_config=tune.FailureConfig(max_failures=space.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),  # small markers (see trainable.py)
            callbacks=[SummaryCallback(str(sweep_dir), list(space.params))],
            stop=time_budget(info),
        ),
    )


def time_budget(info: dict[str, Any]) -> Any:
    """The sweep's TimeBudget (tuning/budget.py), or None without one (sweeps recorded before the key: none)."""
    seconds = info.get("time_budget_s") or 0
    if not seconds:
        return None
    from .budget import TimeBudget

    return TimeBudget(seconds)


def run_trials(opts: SweepOptions, space: Space, record: SweepRecord, sweep_dir: Path,
               tracked: FolderRun | None = None) -> None:
    """Inside an initialised Ray: size the trials, then fit a new Tuner or restore the old one.

    ``tracked``: the sweep's MLflow run, which every trial nests its own under.
    """
    import ray
    from ray import tune

    from .resources import plan

    info = record.info
    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
    gpus_per_trial = info["gpus_per_trial"]
    if gpus_per_trial is None:  # the space's share applies only where there are GPUs
        gpus_per_trial = space.gpus_per_trial if gpus else 0
    nodes = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    res = plan(cpus, gpus, gpus_per_trial=gpus_per_trial, cpus_per_trial=info["cpus_per_trial"],
               max_concurrent=info["max_concurrent_trials"], nodes=nodes)
    record.update(gpus_per_trial=res.gpu, cpus_per_trial=res.cpu, cluster={"CPU": cpus, "GPU": gpus})
    log.info("cluster: %g CPU, %g GPU; each trial gets %g CPU (%d threads) and %g GPU; up to %d at once",
             cpus, gpus, res.cpu, res.num_threads, res.gpu, res.concurrent)

    fixed = {**space.fixed, "num_threads": res.num_threads}
    if res.gpu == 0:
        fixed["device"] = "cpu"
    fixed = {k: v for k, v in fixed.items() if k not in space.params}
    setup = TrialSetup(sweep_dir=str(sweep_dir.resolve()), prepared=info["data_dir"],
                       base_preset=space.base_preset, fixed=fixed,
                       mlflow_uri=tracked.uri if tracked is not None else None,
                       mlflow_parent=tracked.run_id if tracked is not None else None)
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup), res.as_ray())

    experiment = f"{info['storage'].rstrip('/')}/{info['name']}"
    if opts.resume and tune.Tuner.can_restore(experiment):
        log.info("restoring %s: finished trials are kept, unfinished and errored ones continue", experiment)
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if opts.resume:
            log.warning("%s holds no Tune state yet; starting the sweep's trials afresh", experiment)
        tuner = build_tuner(trainable, space, info, sweep_dir, info["storage"])
    tuner.fit()


def settle_interrupted(sweep_dir: Path, space: Space) -> None:
    """After an interruption, trials caught mid-way are waiting for --resume: mark them pending."""
    from .summary import write_summary

    rows = read_summary(sweep_dir)
    for row in rows:
        if row["status"] == layout.TRIAL_RUNNING:
            row["status"] = layout.TRIAL_PENDING
            run_dir = trial_dir(sweep_dir, row["trial_id"])
            if (run_dir / layout.TRIAL_JSON).is_file():
                update_trial_json(run_dir, status=layout.TRIAL_PENDING)
    write_summary(sweep_dir, list(space.params), rows)


def check_resources(sweep_dir: Path, prepared: Path, space: Space, trials: int) -> None:
    """Before the first trial (run_sweep has checked that the folder is writable): its disk must hold every
    trial's checkpoints, and the prepared folder's disk the decoded images still to build
    (docs/robustness.md#before-long-work); engine.errors.ResourceError in one line otherwise."""
    from engine import preflight
    from engine.cache import cache_bytes_needed
    from engine.models import ARCHITECTURES, weight_bytes
    from engine.runs import CACHE
    from engine.train import CHECKPOINT_FACTOR

    doing = f"sweeping into {sweep_dir}"
    models = [m for m in (_values(space, "model") or list(ARCHITECTURES)) if m in ARCHITECTURES]
    per_trial = CHECKPOINT_FACTOR * max(weight_bytes(m) for m in models or ["densenet121"])
    preflight.require_space(sweep_dir.parent, trials * per_trial, doing,
                            f"the checkpoints of {trials} trials, {preflight.size_words(per_trial)} each")
    cache = sum(cache_bytes_needed(prepared, size, view=view) for size in space.image_sizes() for view in space.views())
    if cache:
        preflight.require_space(prepared / CACHE, cache, doing, f"the decoded images, {preflight.size_words(cache)}")


def all_trials_ended(sweep_dir: Path, expected: int) -> bool:
    rows = read_summary(sweep_dir)
    return len(rows) >= expected and all(r["status"] in layout.TRIAL_ENDED for r in rows)


# ----------------------------------------------------------------------------- the sweep


def run_sweep(opts: SweepOptions) -> SweepResult:
    """Run (or resume) a sweep and its finish step; return its folder and outcome."""
    given = load_space(opts.space)  # validate the named space first, even on --resume
    if opts.time_budget is not None and opts.time_budget < 0:
        raise SweepError(f"--time-budget must be 0 (no budget) or a number of seconds, got {opts.time_budget:g}")
    sweep_dir = resolve_folder(opts, given.name)
    from engine import preflight

    preflight.require_writable(sweep_dir.parent, f"sweeping into {sweep_dir}")  # before reading the data
    data_dir = None
    if not opts.resume:
        if opts.data is None:
            raise SweepError("--data is required (the folder written by `python -m engine prepare`)")
        data_dir = Path(opts.data).resolve()
        if not (data_dir / MANIFEST).is_file():
            raise SweepError(f"{data_dir}: not a prepared data folder (no manifest.csv); "
                             "run `python -m engine prepare` first")
        chosen = settings(opts, given)
        check_objectives(given, chosen["search"], chosen["scheduler"])
        check_probe_data(given, data_dir)
        check_folds(given, data_dir, chosen["scheduler"])
        check_resources(sweep_dir, data_dir, given, chosen["num_samples"] * given.grid_size(chosen["search"]))
    # Nothing is written into the folder before this: a refused driver leaves the running one's files alone.
    lock = claim(sweep_dir, resume=opts.resume, default_name=opts.name is None)
    try:
        return _drive(opts, given, sweep_dir, data_dir)
    except Interrupted as exc:
        exc.where = sweep_dir  # for the command line's advice: which sweep to --resume
        raise
    finally:
        if lock is not None:
            lock.release()


def _drive(opts: SweepOptions, given: Space, sweep_dir: Path, data_dir: Path | None) -> SweepResult:
    """The sweep itself, in a folder this process has claimed."""
    import ray

    if opts.resume:
        info = runs.read_json(sweep_dir / layout.SWEEP_JSON)
        space = load_space(sweep_dir / layout.SPACE_COPY)
        if opts.data is not None and Path(opts.data).resolve() != Path(info["data_dir"]):
            log.warning("--resume uses the sweep's recorded data %s, not %s", info["data_dir"], opts.data)
        info.update(status=layout.SWEEP_RUNNING, finished_at=None, resumed_at=now())
        # Resources are sized again for the cluster this run sees; the rest is as recorded.
        info["gpus_per_trial"] = opts.gpus_per_trial
        info["cpus_per_trial"] = opts.cpus_per_trial if opts.cpus_per_trial is not None else space.cpus_per_trial
        if opts.time_budget is not None:  # the rest of the budget is not kept: a resumed sweep starts a new one
            info["time_budget_s"] = opts.time_budget
    else:
        space = given
        shutil.copyfile(space.path, sweep_dir / layout.SPACE_COPY)
        info = {
            "name": sweep_dir.name, "space": space.name, "space_file": str(space.path),
            "base_preset": space.base_preset, **settings(opts, space),
            **dict(zip(("metric", "mode"), objectives(space), strict=True)),
            "gpus_per_trial": opts.gpus_per_trial, "address": opts.address or os.environ.get("RAY_ADDRESS"),
            "storage": opts.storage or str((sweep_dir / layout.RAY_STORAGE).resolve()), "data_dir": str(data_dir),
            "started_at": now(), "finished_at": None, "status": layout.SWEEP_RUNNING,
        }
    if opts.resume:
        check_resources(sweep_dir, Path(info["data_dir"]), space,
                        info["num_samples"] * space.grid_size(info["search"]))
    (sweep_dir / layout.TRIALS).mkdir(exist_ok=True)
    record = SweepRecord(sweep_dir, info)
    record.start()  # writes sweep.json with this driver's host, pid and first heartbeat
    tracked = track_sweep_start(opts.mlflow, sweep_dir, info, space)
    status = layout.SWEEP_INTERRUPTED
    try:
        try:
            warm_cache(Path(info["data_dir"]), space)
            init_ray(opts)
            run_trials(opts, space, record, sweep_dir, tracked)
            expected = info["num_samples"] * space.grid_size(info["search"])
            status = layout.SWEEP_COMPLETE if all_trials_ended(sweep_dir, expected) else layout.SWEEP_INTERRUPTED
        finally:
            # Every way out (a Tune error, KeyboardInterrupt, SystemExit from SIGTERM) ends here.
            ray.shutdown()
            if status == layout.SWEEP_INTERRUPTED:
                settle_interrupted(sweep_dir, space)
            record.update(status=status, finished_at=now() if status == layout.SWEEP_COMPLETE else None)
            log.info("sweep %s: %s", sweep_dir, status)

        best = None
        if status == layout.SWEEP_COMPLETE:
            from .finish import finish

            best = finish(sweep_dir, explain=opts.explain)
    finally:
        record.stop()
        if tracked is not None:
            track_sweep_end(tracked, sweep_dir, complete=status == layout.SWEEP_COMPLETE)
    return SweepResult(sweep_dir=sweep_dir, status=status, best=best)


# ----------------------------------------------------------------------------- MLflow tracking (opt-in)

# The sweep folder's files the parent MLflow run keeps as artefacts (those present).
TRACKED_FILES = (layout.SWEEP_JSON, layout.SPACE_COPY, layout.SUMMARY, layout.BEST, layout.RECOMMENDED,
                 layout.REPEATS)
# A trial's final MLflow status from its status in summary.csv: only a trial that trained to the end FINISHED.
TRIAL_RUN_STATUS = {layout.TRIAL_COMPLETE: "FINISHED", layout.TRIAL_ERROR: "FAILED"}


def sweep_params(info: dict[str, Any], space: Space) -> dict[str, Any]:
    """The parent MLflow run's params: the sweep's settings and each searched parameter's distribution."""
    keys = ("name", "space", "base_preset", "search", "scheduler", "num_samples", "max_concurrent_trials", "metric",
            "mode", "data_dir")
    return {**{k: info.get(k) for k in keys}, **{f"space.{k}": spec for k, spec in space.params.items()},
            **{f"fixed.{k}": v for k, v in space.fixed.items()}}


def track_sweep_start(option: str | None, sweep_dir: Path, info: dict[str, Any], space: Space) -> FolderRun | None:
    """The sweep's parent MLflow run (found again on --resume), with its settings as params; None when the sweep
    is not tracked or the server does not answer (one warning: the sweep goes on untracked)."""
    from engine import tracking

    tracked = tracking.track(tracking.resolve_uri(option), sweep_dir, kind=tracking.KIND_SWEEP, name=sweep_dir.name)
    if tracked is not None:
        tracked.reopen()
        tracked.log_params(sweep_params(info, space))
    return tracked


def track_sweep_end(tracked: FolderRun, sweep_dir: Path, *, complete: bool) -> None:
    """Copy the ended sweep into MLflow: each trial folder as it is now (the evaluation and explanation of those
    the finish step evaluated, the epochs of a trial whose own logging failed) with its final status, then the
    sweep's files and its best trial's scores into the parent run, which ends FINISHED or KILLED."""
    from engine import tracking

    try:
        rows = read_summary(sweep_dir)
    except DamagedFileError as exc:
        log.warning("MLflow: the trials are not copied: %s", exc)
        rows = []
    for row in rows:
        folder = trial_dir(sweep_dir, row["trial_id"])
        if not (folder / runs.CONFIG).is_file():
            continue  # never started: nothing to copy
        trial = tracking.track(tracked.uri, folder, kind=tracking.KIND_TRIAL, name=row["trial_id"],
                               parent_run_id=tracked.run_id)
        if trial is None:
            return  # the one warning said why; the rest would fail the same way
        trial.sync()
        trial.set_tags({"engine.trial_status": row["status"]})
        trial.end(TRIAL_RUN_STATUS.get(row["status"], "KILLED"))
    for name in TRACKED_FILES:
        tracked.log_file(sweep_dir / name)
    try:
        best = runs.read_json(sweep_dir / layout.BEST) if (sweep_dir / layout.BEST).is_file() else None
    except (OSError, DamagedFileError) as exc:
        log.warning("MLflow: the best trial's scores are not copied: %s", exc)
        best = None
    if isinstance(best, dict):
        tracked.set_tags({"engine.best_trial": str(best.get("trial_id"))})
        # The best trial's test scores as "best_test/<score>", and its validation macro-F1.
        scores = tracking.evaluation_metrics({"splits": {"best_test": best.get("test") or {}}})
        if isinstance(best.get("best_val_macro_f1"), int | float):
            scores["best_val_macro_f1"] = float(best["best_val_macro_f1"])
        tracked.log_metrics(scores)
    tracked.end("FINISHED" if complete else "KILLED")


def _values(space: Space, key: str) -> list[Any] | None:
    """The values a trial may take for ``key`` when they can be listed (fixed, choice, grid, randint); else None."""
    spec = space.params.get(key)
    if spec is None:
        return [getattr(space.base_config(), key)]
    kind, arg = next(iter(spec.items()))
    if kind in ("choice", "grid"):
        return list(arg)
    return list(range(arg[0], arg[1] + 1)) if kind == "randint" else None


def check_folds(space: Space, prepared: Path, scheduler: str) -> None:
    """Before any trial starts: a space with split=smear needs smear folds in the prepared manifest, and its fold
    values must be among them (SweepError otherwise); a cross-validation that ASHA may cut, or that leaves folds
    out, is worth a warning."""
    from engine.errors import DataError
    from engine.manifest import read_manifest
    from engine.runs import smear_folds

    if "smear" not in (_values(space, "split") or []):
        return
    manifest = prepared / MANIFEST
    try:
        count = smear_folds(read_manifest(prepared), str(manifest))
    except DataError as exc:
        raise SweepError(f"{space.path} trains with split=smear, but {exc}") from None
    folds = _values(space, "fold") or []
    wrong = [f for f in folds if not (isinstance(f, int) and 0 <= f < count)]
    if wrong:
        raise SweepError(f"{space.path}: fold values {wrong} are out of range: {manifest} has {count} smear folds, "
                         f"0 to {count - 1}")
    if "fold" in space.params:
        if scheduler == "asha":
            log.warning("%s searches fold with ASHA, which may stop some folds early: the spread over folds then "
                        "leaves them out; scheduler fifo trains every fold to the end", space.path)
        missing = sorted(set(range(count)) - set(folds))
        if missing:
            log.warning("%s leaves smear folds %s of %s out of its cross-validation", space.path, missing, manifest)


def check_probe_data(space: Space, prepared: Path) -> None:
    """A space whose objectives include a context-probe metric needs leukocyte masks: refused before it starts."""
    from engine.manifest import has_masks, read_manifest

    probed = [m for m in space.metrics if m in layout.PROBE_METRICS]
    if probed and not has_masks(read_manifest(prepared)).any():
        raise SpaceError(f"{space.path} optimises {probed[0]}, the context probe, but {prepared / MANIFEST} has no "
                         "leukocyte masks to measure it with (prepare from a folder with Segmented/ beside "
                         "Original/)")


def warm_cache(prepared: Path, space: Space) -> None:
    """Decode the images once per size here, instead of in every concurrent trial at once.

    Also the leukocyte masks when the data has them (every trial's context probe reads them, and
    trials with background=random too), so that on a cluster the nodes only read the prepared
    folder's cache.
    """
    from engine.cache import load_cache, load_mask_cache
    from engine.manifest import has_masks, read_manifest

    masks = bool(has_masks(read_manifest(prepared)).any())
    for size in space.image_sizes():
        for view in space.views() if masks else ["field"]:  # without masks a cells-view trial fails at its start
            load_cache(prepared, size, view)
            if masks:
                load_mask_cache(prepared, size, view)
