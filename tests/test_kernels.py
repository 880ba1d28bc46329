"""The command line pins PyTorch's CPU kernels (``cxrbench.kernels``), so that features, entries and trained
networks come out in the same bits on every x86-64 CPU, whatever its widest vector unit.

Each check runs in a fresh interpreter: the libraries read the variables once, at their first tensor operation.
"""

import os
import platform
import subprocess
import sys

import pytest

from cxrbench.kernels import PORTABLE_CPU_KERNELS

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="the pinned kernels are x86-64 ones")

FEATURES = """
import hashlib, os, sys, torch
from cxrbench.cli import main
main(["ls"])  # the command line pins the kernels before its first tensor
from cxrbench.data.synthetic import synthetic_cxr
from cxrbench.features.cxr128 import CXR128Extractor
torch.set_num_threads(1)
ext = CXR128Extractor()
with torch.no_grad():
    f = ext(ext.preprocess(synthetic_cxr(16, 256, seed=0))).numpy()
print(torch.backends.cpu.get_cpu_capability(), os.environ.get("ONEDNN_MAX_CPU_ISA"), hashlib.sha256(f.tobytes()).hexdigest())
"""


def _run(env_extra: dict, drop: tuple = tuple(PORTABLE_CPU_KERNELS)) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    out = subprocess.run([sys.executable, "-c", FEATURES], env={**env, **env_extra}, capture_output=True, text=True,
                         timeout=300, check=True)
    return out.stdout.strip().splitlines()[-1].split()


def test_the_command_line_pins_the_kernels_and_gives_the_bits_the_shell_variables_give():
    pinned = _run({})  # nothing set: the command line sets them
    shell = _run(dict(PORTABLE_CPU_KERNELS))  # set before the interpreter started
    assert pinned[1] == "AVX2" and pinned[0] != "AVX512"
    assert pinned == shell


def test_a_users_own_kernel_choice_wins():
    mine = _run({"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"})
    assert mine[:2] == ["DEFAULT", "SSE41"]


def test_every_result_names_the_kernels_that_computed_it():
    import torch

    from cxrbench.engine.provenance import versions

    said = versions()["cpu_kernels"]
    assert said.startswith(torch.backends.cpu.get_cpu_capability() + " (")
    assert all(f"{k}=" in said for k in PORTABLE_CPU_KERNELS)
