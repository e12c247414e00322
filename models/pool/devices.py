"""Which devices the pool runs on, and how the process is tuned for them."""

from __future__ import annotations

import ctypes
import os
import re

import torch

from models.errors import DeviceError

DEVICE_SPEC = re.compile(r"auto|cpu|cuda(?::(\d+))?")  # what EASEL_DEVICE and --device accept


def resolve_devices(spec: str) -> list[torch.device]:
    """Device semantics (EASEL_DEVICE, --device): auto = every visible GPU, else the CPU."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return [torch.device("cuda", i) for i in range(count)] if count else [torch.device("cpu")]
    if spec == "cpu":
        return [torch.device("cpu")]
    match = DEVICE_SPEC.fullmatch(spec)
    if match is None:
        raise DeviceError(f"The device must be auto, cpu, cuda or cuda:N, not {spec!r}.")
    if not count:
        raise DeviceError(f"Device {spec} was asked for, but PyTorch sees no CUDA device (a CPU-only build, or no driver).")
    if match[1] is None:
        return [torch.device("cuda", i) for i in range(count)]
    if int(match[1]) >= count:
        raise DeviceError(f"Device {spec} was asked for, but only {count} CUDA device(s) are visible.")
    return [torch.device("cuda", int(match[1]))]


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def tune_process(devices: list[torch.device], cpu_threads: int) -> None:
    """PyTorch's intra-op threads (all cores we may use, when the CPU computes), and glibc's allocator."""
    if cpu_threads or not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads or usable_cores())
    if any(d.type == "cpu" for d in devices):
        keep_freed_memory()


def keep_freed_memory() -> None:
    """Ask glibc to keep large freed blocks for reuse instead of returning them to the kernel.

    CPU inference allocates and frees activations of hundreds of MB per image; by default each
    is a fresh mmap whose pages fault in again on every request, which costs as much as the
    arithmetic at 1024 px. The price is that the process keeps its peak memory. No-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31)


def reduced_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for tasks that allow it: None keeps float32."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16
