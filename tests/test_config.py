import dataclasses
import json

import pytest
import torch

from engine.config import Config, ConfigError, build_config, list_presets, parse_overrides
from engine.train import use_cuda_graphs


def test_presets_resolve_to_valid_configs():
    assert {"cpu-quick", "gpu-full", "tiny"} <= set(list_presets())
    quick = build_config("cpu-quick")
    assert quick.model == "densenet121" and quick.image_size == 112
    full = build_config("gpu-full")
    assert full.image_size == 224 and full.effective_lr == pytest.approx(full.lr * full.batch_size / 64)


def _keys_that_differ(a: Config, b: Config) -> set[str]:
    return {f.name for f in dataclasses.fields(Config) if getattr(a, f.name) != getattr(b, f.name)}


def test_the_long_cells_preset_is_the_cells_view_trained_three_times_as_long():
    # docs/explanations.md compares the two as one setting at 10 and 30 epochs: nothing else may differ.
    view, long = build_config("cpu-cells-view"), build_config("cpu-cells-long")
    differ = _keys_that_differ(view, long)
    assert differ == {"epochs"} and (view.epochs, long.epochs) == (10, 30)


def test_the_mixed_stain_preset_is_the_long_cells_preset_with_stain_mixing_and_greyscale():
    # docs/explanations.md sets the two side by side as one model with and without the stain made unreliable.
    long, mix = build_config("cpu-cells-long"), build_config("cpu-cells-mix")
    differ = _keys_that_differ(long, mix)
    assert differ == {"stain_mix", "greyscale_p"} and (mix.stain_mix, mix.greyscale_p) == (0.8, 0.5)


def test_the_long_field_preset_is_the_stain_field_preset_trained_three_times_as_long():
    # docs/explanations.md compares the two as one model at 10 and at 30 epochs.
    short, long = build_config("cpu-cells-stain"), build_config("cpu-cells-stain-long")
    differ = _keys_that_differ(short, long)
    assert differ == {"epochs"} and (short.epochs, long.epochs) == (10, 30)


def test_overrides_are_typed_from_strings():
    cfg = build_config("tiny", parse_overrides(["lr=0.01", "epochs=3", "class_weighted=true", "model=densenet169"]))
    assert cfg.lr == 0.01 and cfg.epochs == 3 and cfg.class_weighted is True and cfg.model == "densenet169"


@pytest.mark.parametrize(
    ("pair", "message"),
    [("learning_rate=0.1", "unknown config key"), ("epochs=three", "epochs: expected int"),
     ("class_weighted=maybe", "expected bool"), ("model=resnet50", "model must be one of"),
     ("lr=-1", "lr must be positive"), ("novalue", "key=value")],
)
def test_bad_overrides_fail_clearly(pair, message):
    with pytest.raises(ConfigError, match=message):
        build_config("tiny", parse_overrides([pair]))


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="cpu-quick"):
        build_config("no-such-preset")


def test_preset_file_with_unknown_key_is_rejected(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"model": "densenet121", "epochz": 3}))
    with pytest.raises(ConfigError, match="epochz"):
        build_config(str(path))


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().lr = 1.0  # type: ignore[misc]


def test_cuda_graphs_exclude_only_the_compile_modes_that_capture_graphs_themselves():
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ConfigError, match="exclusive"):
            build_config("tiny", {"cuda_graphs": "on", "compile": mode})
    # Inductor's default mode leaves graph capture to the engine's step.
    assert build_config("tiny", {"cuda_graphs": "on", "compile": "default"}).compile == "default"


def test_cuda_graphs_resolve_off_under_a_graphing_compile_mode():
    cuda = torch.device("cuda")
    assert use_cuda_graphs(build_config("tiny", {"compile": "default"}), cuda)
    assert not use_cuda_graphs(build_config("tiny", {"compile": "reduce-overhead"}), cuda)
    assert not use_cuda_graphs(build_config("tiny", {"compile": "default"}), torch.device("cpu"))
