"""Which floating-point dtype to run in: ``dtype="auto"`` decided in one place.

``auto`` means bfloat16 where the device computes it natively and float32 everywhere
else. CUDA asks the driver (``torch.cuda.is_bf16_supported()``); a CPU computes bfloat16
natively only with AMX-BF16 or AVX512-BF16 (read from ``/proc/cpuinfo``), elsewhere torch
emulates it, slower than float32; MPS and other devices get float32. An explicit dtype
always wins. 4-bit loading has its own ``compute_dtype`` and does not come here.

Core module: no model code, nothing of ``gem_adapter`` but ``errors``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import GEMError

DTYPE_CHOICES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
BF16_CPU_FLAGS: tuple[str, ...] = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")

_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def _cpuinfo_value(keys: tuple[str, ...]) -> str | None:
    """The first ``/proc/cpuinfo`` value under one of ``keys`` (None where it is missing or unreadable)."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it is missing or unreadable)."""
    return set((_cpuinfo_value(("flags", "Features")) or "").split())


def describe_cpu() -> str:
    """The processor's name, its bfloat16 support and the core count: what a CPU speed figure depends on."""
    import os
    import platform

    name = _cpuinfo_value(("model name", "Model", "Hardware")) or platform.processor() or platform.machine()
    native, reason = native_bfloat16("cpu")
    return f"{name}, bfloat16 {'native (' + reason + ')' if native else reason}, {os.cpu_count()} CPU cores"


def default_device() -> torch.device:
    """Where a model lands when no device is given: CUDA if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def native_bfloat16(device: str | torch.device | None = None) -> tuple[bool, str]:
    """Whether ``device`` (default: ``default_device()``) computes bfloat16 natively, and why."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        try:
            supported = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        except (RuntimeError, AssertionError):  # no driver, or a torch built without CUDA
            supported = False
        return supported, "cuda" if supported else "cuda without bfloat16"
    if device.type == "cpu":
        flags = cpu_flags()
        found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
        if found:
            return True, "/".join(found)
        return False, f"emulated on this CPU (no {'/'.join(BF16_CPU_FLAGS)})"
    return False, f"not used on {device.type}"


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """The torch dtype for ``dtype``: ``auto`` (or None) -> bfloat16 where native, else float32.

    Names: auto, float32/fp32, bfloat16/bf16, float16/fp16, or a torch floating dtype.
    Anything else is refused with a ``GEMError`` naming the valid values.
    """
    if dtype is None or dtype == "auto":
        native, _ = native_bfloat16(device)
        return torch.bfloat16 if native else torch.float32
    return named_dtype(dtype, DTYPE_CHOICES)


def named_dtype(dtype: str | torch.dtype, choices: tuple[str, ...] = DTYPE_CHOICES[1:]) -> torch.dtype:
    """An explicit dtype (float32/fp32, bfloat16/bf16, float16/fp16, or a torch floating dtype); no ``auto``.

    ``choices`` are the names the refusal lists (``resolve_dtype`` adds ``auto``).
    """
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise GEMError(f"dtype {dtype} is not a floating-point dtype; use one of {choices}")
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower() in _NAMES:
        return _NAMES[dtype.strip().lower()]
    raise GEMError(f"dtype {dtype!r} is not one of {choices} (or fp32, bf16, fp16)")


def describe(device: str | torch.device | None = None) -> str:
    """One line for ``gem info``: is bfloat16 native here, and what ``auto`` resolves to."""
    native, why = native_bfloat16(device)
    auto = str(resolve_dtype("auto", device)).removeprefix("torch.")
    state = f"native ({why})" if native else why
    return f"bfloat16: {state} -> dtype auto = {auto}"
