"""``python -m vmunet_monai doctor``: what this machine can run, and how to fix what it cannot."""

from __future__ import annotations

import importlib
import importlib.util
import importlib.metadata as md
import os
import platform
import sys

from vmunet_monai.install import extra_install

__all__ = ["report", "environment", "ENVIRONMENT_KEYS"]

# what can change a result between two runs of the same model: compared by ``compare``
ENVIRONMENT_KEYS = ("device", "scan_backend", "deterministic_algorithms", "vmunet_monai", "torch", "cuda", "monai",
                    "triton", "mamba_ssm")

_PACKAGES = ("torch", "monai", "pytorch-ignite", "numpy", "nibabel", "SimpleITK", "itk", "triton", "mamba-ssm",
             "causal-conv1d")

# the optional extras of setup.cfg: (extra, its packages, what it enables)
_EXTRAS = (
    ("export", ("onnx", "onnxruntime"), "export --format onnx, checked in onnxruntime"),
    ("tracking", ("mlflow",), "python -m monai.bundle run ... --tracking mlflow"),
    ("label", ("monailabel",), "MONAI Label (monailabel itself: pip install --no-deps monailabel==0.8.5 "
                               "pydicom-seg==0.4.1)"),
)


def _extras() -> list[str]:
    """One line per optional extra: its packages' versions and what it enables."""
    lines = []
    for extra, dists, what in _EXTRAS:
        versions = ", ".join(f"{d} {_version(d)}" for d in dists)
        lines.append(f"  {extra:<9} {versions}: {what}")
    return lines


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _devices() -> list[str]:
    import torch

    lines = [f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}")
    else:
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        lines.append(f"CUDA: no device visible (torch is {build})")
    return lines


def environment() -> dict:
    """Versions, the device and the scan backend of this process, as evaluations record them next to their numbers.

    The device is the GPU in use when CUDA has been initialised (the evaluation ran there), else the CPU.
    """
    import torch

    from vmunet_monai import __version__
    from vmunet_monai.ops import resolve_backend

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        index = torch.cuda.current_device()
        kind, device = "cuda", f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    else:
        kind, device = "cpu", f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    try:
        backend = resolve_backend(kind)
    except Exception as exc:  # a bad $VMUNET_SCAN_BACKEND is recorded, not raised
        backend = f"unresolved ({exc})"
    return {
        "device": device,
        "scan_backend": backend,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "vmunet_monai": __version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "monai": _version("monai"),
        "triton": _version("triton"),
        "mamba_ssm": _version("mamba-ssm"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def report() -> str:
    """The full doctor report as text."""
    import torch

    from vmunet_monai import __version__
    from vmunet_monai.ops import backend_status, resolve_backend
    from vmunet_monai.ops.dispatch import ENV_VAR

    out = [f"vmunet_monai {__version__}  python {platform.python_version()} ({sys.executable})", "", "packages:"]
    out += [f"  {name:<15} {_version(name)}" for name in _PACKAGES]
    out += ["", f"optional extras ({extra_install('EXTRA')}):"] + _extras()
    out += ["", "devices:"] + [f"  {line}" for line in _devices()]
    out += ["", "selective-scan backends:"]
    for st in backend_status():
        mark = "available  " if st.available else "unavailable"
        out.append(f"  {st.name:<10} {mark} [{'/'.join(st.devices)}] {st.detail}")
        if not st.available and st.fix:
            out.append(f"  {'':<10} fix: {st.fix}")
    env = os.environ.get(ENV_VAR)
    out.append("")
    out.append(f"${ENV_VAR} = {env!r}" if env else f"${ENV_VAR} is not set (automatic choice)")
    try:
        out.append(f"CPU tensors use: {resolve_backend('cpu')}")
        if torch.cuda.is_available():
            out.append(f"CUDA tensors use: {resolve_backend('cuda')}")
        out.append(_deterministic_note(resolve_backend))
    except Exception as exc:  # a bad $VMUNET_SCAN_BACKEND is reported, not raised
        out.append(f"backend selection fails: {exc}")
    out.append("")
    out.append(_mamba_note())
    out.append("")
    out.append(_compile_note())
    out.append("")
    out.append(_kernels_note())
    return "\n".join(out)


def _deterministic_note(resolve_backend) -> str:
    """The backends deterministic mode (torch.use_deterministic_algorithms, bundles' --determinism true)
    would choose here, and whether their results repeat bit for bit."""
    import torch

    from vmunet_monai.ops.dispatch import DETERMINISTIC_BACKENDS

    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        picks = {"CPU": resolve_backend("cpu")}
        if torch.cuda.is_available():
            picks["CUDA"] = resolve_backend("cuda")
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
    how = {"cpu": "cpu, on one thread", "triton": "triton, its kernels without atomic adds"}
    parts = [f"{device} tensors use {how.get(name, name)}"
             + ("" if name in DETERMINISTIC_BACKENDS else " (not deterministic: it sums with atomics)")
             for device, name in picks.items()]
    return "in deterministic mode (--determinism true): " + "; ".join(parts)


def _kernels_note() -> str:
    """Whether the triton kernels can be compiled for a GPU architecture here (``kernels`` command)."""
    from vmunet_monai.ops.triton_aot import ARCHES, toolchain_problem

    problem = toolchain_problem()
    if problem is not None:
        return f"triton kernels: cannot be compiled for a GPU here: {problem}"
    import triton

    arches = ", ".join(f"sm_{a}" for a in ARCHES)
    return (f"triton kernels: `python -m vmunet_monai kernels --arch sm_90` compiles them for a GPU architecture "
            f"({arches}) here, with or without a GPU, using triton {triton.__version__}'s own ptxas, and reports "
            "registers, spills and SM fill per kernel")


def _compile_note() -> str:
    """What torch.compile of the networks needs here: inductor builds C++ for CPU tensors and Triton
    kernels for CUDA tensors (the scans themselves are custom operators and need neither)."""
    import shutil

    import torch

    cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    lines = ["torch.compile: the scans enter a compiled graph as one custom operator each (cpu, triton backends)"]
    lines.append(f"  CPU: inductor's C++ compiler {cxx!r} found" if cxx else
                 "  CPU: no C++ compiler found (c++, g++, clang++ or $CXX), so inductor cannot build CPU code; "
                 "torch.compile(net, backend='aot_eager') still runs")
    if torch.cuda.is_available():
        has_triton = importlib.util.find_spec("triton") is not None
        lines.append("  CUDA: inductor generates Triton kernels" + ("" if has_triton else
                     f" and triton is not installed ({extra_install('triton')})"))
    return "\n".join(lines)


def _mamba_note() -> str:
    import torch

    from vmunet_monai.ops.mamba_ssm_backend import build_command

    if importlib.util.find_spec("mamba_ssm") is None:
        return (
            "mamba-ssm: not installed, and not needed. The torch/cpu backends run everywhere and the triton backend "
            "runs on CUDA without it; installed, mamba-ssm's kernel is chosen first on CUDA (about 1.2x faster "
            "training on an H100, docs/PERFORMANCE.md). It is an optional extra: released mamba-ssm 2.3.x imports its "
            "compiled selective_scan_cuda unconditionally, so without a CUDA build even its pure-PyTorch reference "
            "cannot be imported; building it needs nvcc and a CUDA torch "
            + ("(this torch is CPU-only)." if not torch.version.cuda else f"(`{build_command()}`).")
        )
    from vmunet_monai.ops.mamba_ssm_backend import status

    ok, detail, fix = status()
    return f"mamba-ssm: {detail}" + ("" if ok else f"\n  fix: {fix}")
