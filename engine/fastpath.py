"""Which fast-path options a training resolves to, and why: bf16 autocast and ``torch.compile``.

Both default to ``auto``. The decision and its reason go into the run's ``env.json``
(``amp_bf16``/``amp_reason``, ``compile``/``compile_reason``) so a reader can tell what ran.

- **bf16 autocast** is on for CUDA, and on CPUs that run bf16 natively (AVX512-BF16 or AMX):
  oneDNN's bf16 kernels trained DenseNet-121 at 31-35 img/s against 20 in fp32 on a 2-core AMD EPYC
  (Zen 4) at 96 px (the demo trials' history.csv). Elsewhere oneDNN emulates bf16, slower than fp32, so it stays off;
  so it does where ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below bf16 (how ``make test-isa`` tries other CPUs' paths).
- **torch.compile** (Inductor, default mode) made the H200 training step 1.68x faster but costs
  124 s to compile with a cold Inductor cache and 11 s with a warm one (docs/benchmarks.md). It is
  switched on where the planned training is long enough to repay that cost: with a warm cache
  (the engine compiled this very configuration on this machine before) or a training long enough
  to repay a cold compilation. On the CPU it stays off: it was not measured to pay there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config
from .inference import switch

log = logging.getLogger(__name__)

# From the H200 ladder (docs/benchmarks.md): 2,842 img/s eager (CUDA graphs), 4,764 compiled;
# compilation took 124 s with a cold Inductor cache and 11 s with a warm one.
EAGER_IMAGES_PER_S = 2842.0
COMPILED_IMAGES_PER_S = 4764.0
COLD_COMPILE_SECONDS = 124.0
WARM_COMPILE_SECONDS = 11.0
MARKERS = "densenet-all-engine"  # folder of the engine's markers inside Inductor's cache


@dataclass(frozen=True)
class FastPath:
    amp: bool
    amp_reason: str
    compile: str  # "off" or a torch.compile mode
    compile_reason: str

    def to_env(self) -> dict[str, object]:
        return {"amp_bf16": self.amp, "amp_reason": self.amp_reason,
                "compile": self.compile, "compile_reason": self.compile_reason}

    @classmethod
    def from_env(cls, env: dict) -> FastPath | None:
        """The decision a run's ``env.json`` recorded, or None where it recorded none."""
        if "compile" not in env or "amp_bf16" not in env:
            return None
        return cls(bool(env["amp_bf16"]), str(env.get("amp_reason", "recorded")), str(env["compile"]),
                   f"{env.get('compile_reason', 'recorded')} (kept on resume)")


# oneDNN instruction-set caps (ONEDNN_MAX_CPU_ISA) below AVX512_CORE_BF16: under them oneDNN emulates bf16.
ISA_CAPS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_isa_cap() -> str:
    """The instruction set oneDNN is capped at by the environment ("" when it is not)."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()


def cpu_runs_bf16_natively() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where oneDNN's bf16 kernels beat fp32, unless oneDNN is capped below."""
    if onednn_isa_cap() in ISA_CAPS_WITHOUT_BF16:
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_amp(cfg: Config, device: torch.device) -> tuple[bool, str]:
    if cfg.amp != "auto":
        return cfg.amp == "on", f"amp={cfg.amp} was asked for"
    if device.type == "cuda":
        return True, "auto: on for CUDA"
    if cpu_runs_bf16_natively():
        return True, "auto: this CPU runs bf16 natively (AVX512-BF16 or AMX)"
    if onednn_isa_cap() in ISA_CAPS_WITHOUT_BF16:
        return False, f"auto: oneDNN is capped at {onednn_isa_cap()} (ONEDNN_MAX_CPU_ISA), where bf16 is emulated"
    return False, "auto: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is slower than fp32"


def images_to_repay(compile_seconds: float) -> int:
    """Training images after which a compilation of ``compile_seconds`` has paid for itself."""
    saved_per_image = 1 / EAGER_IMAGES_PER_S - 1 / COMPILED_IMAGES_PER_S
    return int(compile_seconds / saved_per_image)


def resolve_compile(cfg: Config, device: torch.device, planned_images: int, warm_cache: bool) -> tuple[str, str]:
    """The compile mode for ``cfg`` and why; ``planned_images`` = epochs x training images."""
    if cfg.compile != "auto":
        return cfg.compile, f"compile={cfg.compile} was asked for"
    if device.type != "cuda":
        return "off", "auto: off on the CPU (compilation was not measured to pay there)"
    cache = "warm" if warm_cache else "cold"
    needed = images_to_repay(WARM_COMPILE_SECONDS if warm_cache else COLD_COMPILE_SECONDS)
    if planned_images >= needed:
        return "default", (f"auto: {planned_images:,} planned training images repay a {cache}-cache "
                           f"compilation (from {needed:,})")
    return "off", (f"auto: {planned_images:,} planned training images do not repay a {cache}-cache "
                   f"compilation (from {needed:,}); --set compile=default compiles anyway")


def resolve(cfg: Config, device: torch.device, planned_images: int) -> FastPath:
    """``planned_images``: the images the training will step through (epochs x training images)."""
    amp, amp_reason = resolve_amp(cfg, device)
    warm = cfg.compile == "auto" and device.type == "cuda" and marker_path(cfg, device, amp).exists()
    mode, compile_reason = resolve_compile(cfg, device, planned_images, warm)
    return FastPath(amp, amp_reason, mode, compile_reason)


# ----------------------------------------------------------------------------- warm-cache markers


def inductor_cache_dir() -> Path:
    """Inductor's on-disk cache (TORCHINDUCTOR_CACHE_DIR, else its default under the temp folder)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir
        return Path(cache_dir())
    except (ImportError, AttributeError):  # a torch without Inductor's helper: its documented default
        user = os.environ.get("USER", "user")
        return Path(tempfile.gettempdir()) / f"torchinductor_{user}"


def marker_path(cfg: Config, device: torch.device, amp: bool) -> Path:
    """Where the engine notes that it compiled this graph: everything that changes the graph is in the key."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    key = {"torch": torch.__version__, "device": gpu, "model": cfg.model, "image_size": cfg.image_size,
           "batch_size": cfg.batch_size, "dropout": cfg.dropout, "amp": amp,
           "channels_last": switch(cfg.channels_last, device, on_cpu=True),
           "cuda_graphs": switch(cfg.cuda_graphs, device), "mode": "default"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return inductor_cache_dir() / MARKERS / f"{digest}.json"


def note_compiled(cfg: Config, device: torch.device, amp: bool, seconds: float) -> None:
    """After a compiled epoch: the next ``compile=auto`` training of this graph will find the cache warm."""
    path = marker_path(cfg, device, amp)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"first_epoch_seconds": round(seconds, 1)}))
    except OSError as exc:  # a read-only cache only costs the next run its warm-cache decision
        log.warning("could not note the compiled graph in %s: %s", path, exc)
