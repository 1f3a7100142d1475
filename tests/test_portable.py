"""Portable arithmetic (`scratchdet --portable`): the same bits whatever the CPU would choose by itself, refused
where it cannot hold, and refused where it was asked for too late."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scratchdet import portable

# A few SGD steps of convolutions, GroupNorm and a linear layer (what a detector's step is made of); prints the
# weights' hash. It calls the CLI's entry point first, as `scratchdet --portable ...` would.
STEPS = """
import hashlib, sys
from scratchdet.cli import main
main(sys.argv[1:] + ["config", "list"])
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.GroupNorm(8, 32), torch.nn.ReLU(),
                          torch.nn.Conv2d(32, 32, 3, stride=2), torch.nn.Flatten(), torch.nn.LazyLinear(10))
images = torch.randn(16, 3, 40, 40)
net(images)
optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
for _ in range(5):
    optimizer.zero_grad()
    net(images).logsumexp(1).mean().backward()
    optimizer.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest())
"""
# What another CPU would choose by itself, forced on this one.
OTHER_CPU = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
needs_portable = pytest.mark.skipif(portable.unsupported() is not None, reason=str(portable.unsupported()))


def _unpinned() -> dict[str, str]:
    """This process's environment without any portable setting it may carry."""
    return {k: v for k, v in os.environ.items() if k not in portable.ENVIRONMENT}


def _weights_hash(flags: list[str], environment: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", STEPS, *flags], env={**_unpinned(), **environment},
                            capture_output=True, text=True, check=True)  # fmt: skip
    return result.stdout.split()[-1]


@needs_portable
def test_portable_steps_give_the_same_bits_where_the_cpu_would_choose_otherwise() -> None:
    assert _weights_hash([], {}) != _weights_hash([], OTHER_CPU)  # the choices matter without it
    portable_here = _weights_hash(["--portable"], {})
    assert _weights_hash(["--portable"], OTHER_CPU) == portable_here
    assert _weights_hash([], {portable.SWITCH: "1", **OTHER_CPU}) == portable_here  # the environment asks too


@needs_portable
def test_portable_asked_for_after_torch_has_computed_is_refused() -> None:
    if portable._mkl_branch() is None:
        pytest.skip("this PyTorch does not expose MKL's branch")
    late = "import torch; torch.ones(8, 8) @ torch.ones(8, 8); from scratchdet.cli import main; main(['--portable', 'config', 'list'])"  # noqa: E501
    result = subprocess.run([sys.executable, "-c", late], env=_unpinned(), capture_output=True, text=True, check=False)
    # On an AVX-512 machine the kernels PyTorch chose are named too; MKL's branch is named on every machine.
    assert re.search(
        r"portable arithmetic did not take effect \((PyTorch's kernels are \w+; )?MKL's branch is 1, "
        r"not COMPATIBLE \(3\)\)",
        result.stderr,
    ), result.stderr
    assert f"Start the process with {portable.SWITCH}=1 in its environment" in result.stderr


@pytest.mark.parametrize(
    ("machine", "flags", "reason"),
    [
        ("x86_64", "fpu sse2 avx avx2 fma bmi2", None),
        ("x86_64", "fpu sse2 avx fma", "portable arithmetic uses AVX2 kernels; this CPU lacks avx2"),
        ("x86_64", "fpu sse2 avx", "portable arithmetic uses AVX2 kernels; this CPU lacks avx2 and fma"),
        ("aarch64", "fp asimd", "portable arithmetic needs an x86-64 CPU; this one is aarch64"),
    ],
)
def test_a_cpu_without_avx2_and_fma_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str, flags: str, reason: str | None
) -> None:
    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(portable.platform, "machine", lambda: machine)
    assert portable.unsupported(tmp_path / "cpuinfo") == reason
    if machine == "x86_64":
        assert f"cannot read {tmp_path / 'missing'}" in str(portable.unsupported(tmp_path / "missing"))
