"""Search-space files and resource sizing: pure Python, no Ray cluster started."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuning.resources import ResourceError, plan
from tuning.space import SpaceError, list_spaces, load_space, param_space

MINIMAL = "base_preset: tiny\nparams:\n  lr: {loguniform: [0.001, 0.01]}\n"


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_spaces_load() -> None:
    assert {"tiny", "cpu-quick", "gpu"} <= set(list_spaces())
    for name in list_spaces():
        space = load_space(name)
        assert space.params and space.max_epochs() >= 1


def test_unknown_param_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "  learning_rate: {choice: [0.1]}\n")
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(path) in str(err.value) and "learning_rate" in str(err.value)


@pytest.mark.parametrize("text, words", [
    (MINIMAL + "sampler: tpe\n", ["sampler"]),
    (MINIMAL + "fixed: {epoch: 3}\n", ["fixed.epoch"]),
    (MINIMAL.replace("loguniform", "lognormal"), ["lognormal"]),
    (MINIMAL.replace("[0.001, 0.01]", "[0.01, 0.001]"), ["params.lr", "low < high"]),
    (MINIMAL + "fixed: {lr: 0.1}\n", ["'lr'", "both fixed and searched"]),
    (MINIMAL.replace("tiny", "no-such-preset"), ["no-such-preset"]),
    ("base_preset: tiny\nparams:\n  batch_size: {choice: [many]}\n", ["batch_size"]),
    (MINIMAL + "search: bayes\n", ["search"]),
    (MINIMAL + "time_budget_s: -5\n", ["time_budget_s", ">= 0"]),
    (MINIMAL + "time_budget_s: soon\n", ["time_budget_s"]),
])
def test_invalid_spaces_fail_clearly(tmp_path: Path, text: str, words: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SpaceError) as err:
        load_space(path)
    for word in [str(path), *words]:
        assert word in str(err.value)


def test_a_time_budget_stops_trials_only_once_it_is_spent_and_restarts_on_resume() -> None:
    import pickle

    from tuning.budget import TimeBudget

    budget = TimeBudget(3600)
    assert not budget("t1", {"epoch": 1}) and not budget.stop_all()
    spent = TimeBudget(0)
    assert spent("t1", {"epoch": 2}) and spent("t2", {"epoch": 1}) and not spent.stop_all()
    spent.seconds = 3600  # a resumed sweep (its state unpickled) gets its whole budget again
    assert not pickle.loads(pickle.dumps(spent))("t1", {"epoch": 3})


def test_unknown_space_name_lists_the_available_ones() -> None:
    with pytest.raises(SpaceError, match="tiny"):
        load_space("no-such-space")


def test_param_space_per_search(tmp_path: Path) -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    space = load_space(write(tmp_path, "base_preset: tiny\nparams:\n"
                                       "  lr: {loguniform: [0.001, 0.01]}\n"
                                       "  batch_size: {choice: [16, 32]}\n"
                                       "  model: {grid: [densenet-tiny, densenet121]}\n"
                                       "  epochs: {randint: [2, 4]}\n"))
    random = param_space(space, "random")
    assert isinstance(random["lr"], Float) and isinstance(random["batch_size"], Categorical)
    assert random["model"] == {"grid_search": ["densenet-tiny", "densenet121"]}
    assert isinstance(random["epochs"], Integer) and random["epochs"].upper == 5  # inclusive high
    assert param_space(space, "grid")["batch_size"] == {"grid_search": [16, 32]}
    assert isinstance(param_space(space, "optuna")["model"], Categorical)
    assert space.grid_size("random") == 2 and space.grid_size("grid") == 4 and space.grid_size("optuna") == 1
    assert space.max_epochs() == 4


def test_fractional_gpus_size_cpus_so_all_gpus_fill() -> None:
    # The trap: 2 CPUs, 2 GPUs, half a GPU each. One CPU per trial would fit only two
    # trials, both on GPU 0. The plan gives each trial half a CPU so that four run.
    res = plan(2, 2, gpus_per_trial=0.5)
    assert (res.cpu, res.gpu, res.concurrent, res.num_threads) == (0.5, 0.5, 4, 1)
    res = plan(16, 2, gpus_per_trial=0.25)
    assert (res.cpu, res.concurrent, res.num_threads) == (2, 8, 2)
    assert plan(16, 4, gpus_per_trial=1).cpu == 4
    assert plan(16, 4, gpus_per_trial=2).concurrent == 2


def test_cpu_share_fits_the_smallest_gpu_node() -> None:
    # 34 CPUs over 4 slots would be 8 each, but the 2-CPU node could then hold no trial.
    res = plan(34, 2, gpus_per_trial=0.5, nodes=[(2, 1), (32, 1)])
    assert (res.cpu, res.concurrent) == (1, 4)
    assert plan(6, 0, gpus_per_trial=0, max_concurrent=2, nodes=[(2, 0)] * 3).cpu == 2


def test_cpu_only_and_caps() -> None:
    assert plan(2, 0, gpus_per_trial=0, max_concurrent=2) == plan(2, 0, gpus_per_trial=0, cpus_per_trial=1)
    res = plan(8, 0, gpus_per_trial=0, max_concurrent=2)
    assert (res.cpu, res.num_threads, res.concurrent) == (4, 4, 2)
    with pytest.raises(ResourceError, match="no GPUs"):
        plan(2, 0, gpus_per_trial=0.5)
    with pytest.raises(ResourceError, match="whole number"):
        plan(2, 4, gpus_per_trial=1.5)
