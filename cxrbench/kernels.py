"""The one thing besides a seed that a number needs to come out in the same bits on another machine: the same CPU
kernels. No heavy import here: the command line calls it before anything else, even ``cxrbench --help``."""

from __future__ import annotations

import os
import platform

#: the vector kernels every shipped number and network was made with, on any x86-64 CPU: oneDNN's convolutions
#: and ATen's own kernels otherwise take the widest instructions there (AVX-512 on many servers), whose sums run
#: in another order. Measured on an AVX-512 machine: features differ in the last bits (a recomputed entry value
#: 2.6e-6 off), and 100 training steps of the cxr128 network drift to other weights (another draw of the recipe);
#: with these two, both are bit for bit the shipped ones. It costs speed there: extraction 1.3x (cxr128) to 1.5x
#: (Inception) slower (``tests/benchmarks/cpu_kernels.py``); a user's own values win.
PORTABLE_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def portable_cpu_kernels() -> dict[str, str | None]:
    """Pin the CPU kernels to ``PORTABLE_CPU_KERNELS`` on x86-64 unless the user set those variables (theirs win).

    Call it before the process runs its first tensor operation: both libraries read the variables once, at first
    use. Returns the variables as they now stand (None: unset, as on other CPUs).
    """
    if platform.machine().lower() in ("x86_64", "amd64"):
        for k, v in PORTABLE_CPU_KERNELS.items():
            os.environ.setdefault(k, v)
    return {k: os.environ.get(k) for k in PORTABLE_CPU_KERNELS}


def cpu_kernels() -> dict:
    """The CPU kernels PyTorch dispatches to here (e.g. "AVX2", "AVX512") and the variables that chose them: the
    same seed trains bit for bit the same weights only with the same kernels."""
    import torch  # why: the command line imports this module before anything heavy

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            **{k: os.environ.get(k) for k in PORTABLE_CPU_KERNELS}}
