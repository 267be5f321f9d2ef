"""The fast-path decisions (bf16 autocast, torch.compile) and their record in env.json."""

import json

import pytest
import torch

from engine import fastpath, runs
from engine.config import build_config
from engine.train import fit

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def inductor_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    return tmp_path / "inductor"


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_follows_native_bf16_on_the_cpu(monkeypatch, native):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(fastpath, "cpu_runs_bf16_natively", lambda: native)
    on, reason = fastpath.resolve_amp(build_config("tiny", {"amp": "auto"}), CPU)
    assert on is native and ("natively" in reason if native else "no native bf16" in reason)
    assert fastpath.resolve_amp(build_config("tiny", {"amp": "auto"}), CUDA)[0]
    assert fastpath.resolve_amp(build_config("tiny", {"amp": "off"}), CUDA) == (False, "amp=off was asked for")
    assert fastpath.resolve_amp(build_config("tiny", {"amp": "on"}), CPU)[0]


@pytest.mark.parametrize(("cap", "native"), [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True),
                                             ("AVX512_CORE_AMX", True), ("", True)])
def test_a_onednn_cap_below_bf16_turns_amp_auto_off(monkeypatch, cap, native):
    # On a CPU that has bf16, capping oneDNN below it makes oneDNN emulate bf16: auto must not choose it.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    on, reason = fastpath.resolve_amp(build_config("tiny", {"amp": "auto"}), CPU)
    assert on is native, reason
    assert native or cap.upper() in reason
    assert fastpath.resolve_amp(build_config("tiny", {"amp": "on"}), CPU)[0]


def test_compile_auto_pays_only_for_long_enough_gpu_training():
    cfg = build_config("tiny", {"compile": "auto"})
    cold, warm = fastpath.images_to_repay(fastpath.COLD_COMPILE_SECONDS), fastpath.images_to_repay(
        fastpath.WARM_COMPILE_SECONDS)
    assert warm < cold
    # 124 s saved at 0.142 ms per image: about 870,000 images (the H200 figures)
    assert 800_000 < cold < 950_000
    assert fastpath.resolve_compile(cfg, CPU, 10**9, warm_cache=True)[0] == "off"
    assert fastpath.resolve_compile(cfg, CUDA, cold - 1, warm_cache=False)[0] == "off"
    assert fastpath.resolve_compile(cfg, CUDA, cold, warm_cache=False)[0] == "default"
    mode, reason = fastpath.resolve_compile(cfg, CUDA, warm, warm_cache=True)
    assert mode == "default" and "warm-cache" in reason
    mode, reason = fastpath.resolve_compile(cfg, CUDA, warm - 1, warm_cache=True)
    assert mode == "off" and "compile=default" in reason
    explicit = build_config("tiny", {"compile": "default"})
    assert fastpath.resolve_compile(explicit, CPU, 1, warm_cache=False) == ("default", "compile=default was asked for")


def test_a_noted_compilation_makes_the_next_decision_warm(inductor_cache):
    cfg = build_config("tiny", {"compile": "auto", "epochs": 40})
    planned = 100_000  # repays a warm compilation, not a cold one
    assert fastpath.resolve(cfg, CUDA, planned).compile == "off"
    fastpath.note_compiled(cfg, CUDA, amp=True, seconds=130.0)
    assert (inductor_cache / fastpath.MARKERS).is_dir()
    assert fastpath.resolve(cfg, CUDA, planned).compile == "default"
    # A different graph (another resolution) is still cold.
    assert fastpath.resolve(build_config("tiny", {"compile": "auto", "image_size": 96}), CUDA, planned).compile == "off"


def test_fit_records_the_decision_and_a_resume_keeps_it(prepared_tiny, tmp_path, monkeypatch):
    cfg = build_config("tiny", {"epochs": 1})
    run = fit(cfg, prepared_tiny, tmp_path / "run")
    env = json.loads((run / runs.ENV).read_text())
    assert env["compile"] == "off" and "auto" in env["compile_reason"]
    assert env["amp_bf16"] == fastpath.resolve_amp(cfg, CPU)[0] and env["amp_reason"]
    kept = fastpath.FastPath.from_env(env)
    assert kept is not None and kept.compile == "off" and "kept on resume" in kept.compile_reason
    assert fastpath.FastPath.from_env({"device": "cpu"}) is None
