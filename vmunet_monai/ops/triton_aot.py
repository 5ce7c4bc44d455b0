"""Compile the triton backend's kernels for an NVIDIA GPU architecture on a machine without a GPU.

Triton's interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, on the CPU. It does
not check that they compile for a GPU, and it says nothing of what they cost there. This module runs
the backend's own launch code, through real SS2D layers (forward and backward, every scan direction
and option), with every kernel launch replaced by Triton's ahead-of-time compilation for a chosen
architecture: ``sm_90`` (H100, H200), ``sm_80`` (A100) and others. Triton brings its own ``ptxas``
and ``cuobjdump``, so neither a GPU nor a CUDA driver nor a CUDA toolkit is needed. CPU tensors
stand in for the CUDA ones (only their dtypes, strides and sizes matter); nothing is computed.

For every kernel a layer launches, :func:`compile_report` gives what the GPU would give it:
registers per thread, bytes spilled to local memory, shared memory, how many programs one SM holds
at once (the register file, warp and shared-memory limits of the architecture), the launch's grid
against the card's SM count, and the machine instructions of its main loop.
``python -m vmunet_monai kernels`` prints it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import torch

from vmunet_monai.install import extra_install
from vmunet_monai.validation import comma_list

__all__ = ["ARCHES", "CASES", "KernelRow", "compile_report", "format_report", "parse_arch", "parse_config", "run",
           "target_only", "toolchain_problem"]


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of one compute capability and the SM count of a common card with it."""

    card: str
    sms: int
    max_warps: int
    max_blocks: int
    shared_bytes: int  # shared memory one SM can hand out to resident blocks
    registers: int = 65536


# CUDA C Programming Guide, "Technical Specifications per Compute Capability"
ARCHES = {
    80: Arch("A100 SXM", 108, 64, 32, 164 * 1024),
    86: Arch("A40", 84, 48, 16, 100 * 1024),
    89: Arch("L40S", 142, 48, 24, 100 * 1024),
    90: Arch("H100 SXM", 132, 64, 32, 228 * 1024),
    100: Arch("B200", 148, 64, 32, 228 * 1024),
}


def parse_arch(arch) -> int:
    """``90``, ``"90"``, ``"sm_90"``, ``"9.0"`` or ``"sm90"`` -> 90 (one of :data:`ARCHES`)."""
    text = str(arch).strip().lower().removeprefix("sm_").removeprefix("sm")
    value = None
    if re.fullmatch(r"\d+\.\d", text):
        major, minor = text.split(".")
        value = int(major) * 10 + int(minor)
    elif text.isdigit():
        value = int(text)
    if value not in ARCHES:
        known = ", ".join(f"sm_{a} ({ARCHES[a].card})" for a in ARCHES)
        raise ValueError(f"unknown GPU architecture {arch!r}; known: {known}")
    return value


class _TargetDriver:
    """The part of a Triton driver that compilation asks for: the target, a device and a stream."""

    def __init__(self, arch: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_interface(self):  # asked for by some Triton versions' autotuning; never used here
        return torch.cuda


@dataclass
class KernelRow:
    """One compiled kernel of one case (see :func:`compile_report`)."""

    case: str
    kernel: str
    variant: str  # the launch's walk order and phase, e.g. "rows", "cols reversed", "phase 1 rows"
    dtype: str  # of the first tensor argument
    grid: tuple
    programs: int
    num_warps: int
    registers: int
    spill_bytes: int  # local memory per thread (register spills and stack)
    shared_bytes: int
    programs_per_sm: int  # resident at once, from the registers, warps and shared memory
    limited_by: str
    sm_fill: float  # programs / (SMs * programs_per_sm): below 1 the launch leaves the card partly idle
    loop: dict | None = None  # loop_profile of the compiled code
    atomics: int = 0  # atomic instructions in the whole kernel (none in a deterministic kernel)
    loop_steps: int | None = None  # scan steps per iteration of a step loop's main loop (its unroll factor)
    # the step-loop backward (KernelConfig(bwd_stepwise=True)) runs each step in three passes, each its
    # own loop: their instructions per step, in code order (recompute, adjoint, sums over channels)
    passes: list | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _step_passes(loop: dict | None, unroll: int) -> list | None:
    """Instructions per step of the step-loop backward's three passes, from its innermost loops in code
    order: unrolled (``unroll`` > 1), the first two passes are each a loop of ``unroll`` steps followed by
    one for the remaining steps (not counted), the third is not unrolled."""
    if not loop:
        return None
    inner = loop["inner"]
    if unroll > 1 and len(inner) >= 5:
        main = inner[-5::2]
        return [round(main[0] / unroll, 1), round(main[1] / unroll, 1), main[2]]
    return inner[-3:] if len(inner) >= 3 else None


def _tool(name: str) -> str:
    """Path of one of the NVIDIA binaries that ship inside the triton wheel."""
    try:
        from triton import knobs

        path = getattr(knobs.nvidia, name).path
        if path:
            return path
    except (ImportError, AttributeError):
        pass
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise RuntimeError(f"{name} was not found in triton {triton.__version__} ({path}); "
                           "it ships with the Linux x86-64 and aarch64 triton wheels")
    return path


def toolchain_problem() -> str | None:
    """Why kernels cannot be compiled for a GPU here (triton missing, or its wheel without ptxas and
    cuobjdump), or None when they can."""
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed ({extra_install('triton')}); it brings ptxas and cuobjdump"
    try:
        _tool("ptxas"), _tool("cuobjdump")
    except RuntimeError as exc:
        return str(exc)
    return None


def _cuobjdump(cubin: bytes, option: str) -> str:
    """What ``cuobjdump <option>`` prints for ``cubin``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([_tool("cuobjdump"), option, path], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """Registers, stack, local and shared bytes of the (first) kernel in ``cubin`` (``cuobjdump -res-usage``)."""
    text = _cuobjdump(cubin, "-res-usage")
    found = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", text)
        if m is None:
            raise RuntimeError(f"cuobjdump -res-usage printed no {key} value:\n{text}")
        found[key] = int(m.group(1))
    return found


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_BACK_BRANCH = re.compile(r"\bBRA(?:\.[A-Z0-9]+)*\s+(?:[^\s,]+,\s*)?0x([0-9a-f]+)")  # BRA 0x.., BRA.U UP1, 0x..


_ATOMIC = r"\b(RED|ATOM)G?\."


def atomic_instructions(sass: str) -> int:
    """Atomic read-modify-write instructions (``RED``, ``ATOM``, ``ATOMG``) in machine code."""
    return sum(1 for _, text in _SASS_LINE.findall(sass) if re.search(_ATOMIC, text))


def loop_profile(cubin: bytes, sass: str | None = None) -> dict | None:
    """The kernel's longest innermost loop in its machine code (``cuobjdump -sass``): instructions per
    iteration, and the global loads, special-function ops (``MUFU``: exp2, log2, reciprocals),
    atomics, barriers and local-memory loads and stores (register spills) among them. For the
    step-loop forward an iteration is ``KernelConfig.unroll`` steps, for the backward one chunk;
    branches inside the loop count whole (the forward's checkpoint store, taken every T steps, is part
    of its iteration). None if the kernel has no loop. ``sass``: the cubin's ``cuobjdump -sass`` text,
    if already at hand."""
    sass = _cuobjdump(cubin, "-sass") if sass is None else sass
    code = [(int(m.group(1), 16), m.group(2).strip()) for m in _SASS_LINE.finditer(sass)]
    spans = [(int(m.group(1), 16), addr) for addr, text in code
             if (m := _BACK_BRANCH.search(text)) and int(m.group(1), 16) < addr]
    # innermost loops only (an outer loop's count would include its inner loop's), the longest of them
    inner = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]
    if not inner:
        return None
    start, end = max(inner, key=lambda span: span[1] - span[0])
    best = [t for a, t in code if start <= a <= end]

    def count(pattern):
        return sum(1 for t in best if re.search(pattern, t))

    return dict(instructions=len(best), loads=count(r"\bLDG\b|\bLDG\."), sfu=count(r"\bMUFU\."),
                atomics=count(_ATOMIC), barriers=count(r"\bBAR\."), local=count(r"\b(LDL|STL)\b"),
                inner=[sum(1 for a, _ in code if s <= a <= e) for s, e in sorted(inner)])


def residency(arch: int, registers: int, num_warps: int, shared_bytes: int) -> tuple[int, str]:
    """(programs resident on one SM, the limit that sets it): registers are handed out per warp in
    units of 256, and every block costs 1 KiB of shared memory besides its own (sm_80 and later)."""
    a = ARCHES[arch]
    per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    limits = {
        "registers": (a.registers // per_warp) // num_warps,
        "warps": a.max_warps // num_warps,
        "blocks": a.max_blocks,
        "shared memory": a.shared_bytes // (shared_bytes + 1024),
    }
    limit = min(limits, key=limits.get)
    return limits[limit], limit


def _variant(kwargs) -> str:
    if kwargs.get("ALL4"):
        return f"phase {kwargs['PHASE']} all four" if kwargs.get("PHASE") else "all four"
    parts = []
    if kwargs.get("PHASE"):
        parts.append(f"phase {kwargs['PHASE']}")
    if "COL" in kwargs:
        parts.append("cols" if kwargs["COL"] else "rows")
    if kwargs.get("REV"):
        parts.append("reversed")
    return " ".join(parts) or "-"


@contextlib.contextmanager
def target_only(arch: int, on_compiled):
    """Within this context every triton-backend launch is compiled for ``sm_<arch>`` and handed to
    ``on_compiled(kernel_name, compiled, grid, kwargs, args)`` instead of run; the triton backend takes CPU
    tensors. Nothing is computed: outputs stay as they were allocated."""
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError(f"compiling kernels needs triton: {extra_install('triton')}")
    from triton.runtime.driver import driver

    from vmunet_monai.ops import triton_scan

    arch = parse_arch(arch)

    def hook(kernel, grid, args, kwargs):
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        on_compiled(kernel.fn.__name__, compiled, grid, kwargs, args)

    if triton_scan._LAUNCH_HOOK is not None:
        raise RuntimeError("target_only contexts do not nest")
    previous = getattr(driver, "_active", None)  # None on a machine without a GPU driver
    driver.set_active(_TargetDriver(arch))
    triton_scan._LAUNCH_HOOK = hook
    try:
        yield
    finally:
        triton_scan._LAUNCH_HOOK = None
        driver._active = previous


# ---------------------------------------------------------------------------------------------------
# the cases: the launches of real layers at VM-UNet's stage-1 geometry

STAGE1 = dict(d_model=96, d_state=16, size=64)  # 256x256 input: C = 96, Di = 192, a 64x64 map, N = 16


def _ss2d_case(dtype=torch.float32, channels_last_scan=False, fused_dt_proj=False, fused_norm_gate=False, **config):
    def run(batch):
        from vmunet_monai.layers.ss2d import SS2D
        from vmunet_monai.ops.triton_scan import kernel_config

        torch.manual_seed(0)
        layer = SS2D(STAGE1["d_model"], d_state=STAGE1["d_state"], scan_backend="triton")
        layer.channels_last_scan, layer.fused_dt_proj = channels_last_scan, fused_dt_proj
        layer.fused_norm_gate = fused_norm_gate
        size = STAGE1["size"]
        x = torch.randn(batch, size, size, STAGE1["d_model"], requires_grad=True)
        saved = kernel_config()
        kernel_config(saved.replace(**config))
        try:
            autocast = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            with autocast:
                out = layer(x)
            out.float().sum().backward()
        finally:
            kernel_config(saved)
    return run


def _generic_case(batch):
    """mamba-ssm's selective_scan_fn interface on the triton kernels: stage 1 as the official model
    calls it, (batch, 4 * Di, L) with four groups of B and C, the last state returned."""
    from vmunet_monai.ops import dispatch

    di, n, length = 4 * 2 * STAGE1["d_model"], STAGE1["d_state"], STAGE1["size"] ** 2
    u = torch.zeros(batch, di, length, requires_grad=True)
    delta = torch.zeros(batch, di, length, requires_grad=True)
    A = torch.zeros(di, n, requires_grad=True)
    B = torch.zeros(batch, 4, n, length, requires_grad=True)
    C = torch.zeros(batch, 4, n, length, requires_grad=True)
    D = torch.zeros(di, requires_grad=True)
    y, _ = dispatch.selective_scan(u, delta, A, B, C, D, None, D, True, True, backend="triton")
    y.sum().backward()


CASES = {
    "ss2d": ("SS2D forward + backward, float32, defaults", _ss2d_case()),
    "ss2d_bf16": ("the same under bfloat16 autocast", _ss2d_case(torch.bfloat16)),
    "ss2d_fp16": ("the same under float16 autocast", _ss2d_case(torch.float16)),
    "ss2d_fast": ("channels_last_scan + fused_dt_proj + fused_norm_gate, bfloat16",
                  _ss2d_case(torch.bfloat16, True, True, True)),
    "ss2d_fast_fp32": ("the same fast options in float32", _ss2d_case(torch.float32, True, True, True)),
    "ss2d_recompute_states": ("KernelConfig(keep_states=False)", _ss2d_case(keep_states=False)),
    "ss2d_per_direction": ("KernelConfig(one_launch=False), a forward launch per direction",
                           _ss2d_case(one_launch=False)),
    "ss2d_segments": ("KernelConfig(segments=4), the two-pass forward", _ss2d_case(segments=4)),
    "ss2d_chunked": ("KernelConfig(block_d=4, stepwise=False), associative scans over chunks",
                     _ss2d_case(block_d=4, stepwise=False)),
    "selective_scan": ("mamba-ssm's selective_scan_fn interface, four groups, last state", _generic_case),
    "ss2d_deterministic": ("the fast options with KernelConfig(deterministic=True): no atomic adds",
                           _ss2d_case(torch.bfloat16, True, True, True, deterministic=True)),
    "ss2d_bwd_steps": ("KernelConfig(bwd_stepwise=True), the step-loop backward", _ss2d_case(bwd_stepwise=True)),
    "ss2d_fast_bwd_steps": ("the fast options, bfloat16, with the step-loop backward, both passes in 4 segments",
                            _ss2d_case(torch.bfloat16, True, True, True, bwd_stepwise=True, segments=4)),
}


def parse_config(text) -> dict:
    """``"bwd_num_warps=4,keep_states=false"`` -> ``{"bwd_num_warps": 4, "keep_states": False}``: fields
    of :class:`~vmunet_monai.ops.triton_scan.KernelConfig` with integer or true/false values."""
    if isinstance(text, dict):
        return dict(text)
    items = [t for t in comma_list(text) if t]
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        value = value.strip().lower()
        if not sep or not key.strip() or not (value.isdigit() or value in ("true", "false")):
            raise ValueError(f"kernel config item {item!r} must be FIELD=INTEGER or FIELD=true/false "
                             "(fields of vmunet_monai.ops.triton_scan.KernelConfig)")
        out[key.strip()] = (value == "true") if value in ("true", "false") else int(value)
    return out


_DUMP_STAGES = ("ttir", "ttgir", "llir", "ptx")  # Triton's intermediate forms, as ``compiled.asm`` keys


def dump_kernel(compiled, folder: str, stem: str, sass: str | None = None) -> list[str]:
    """Write a compiled kernel's Triton IR (``.ttir``: before layouts, ``.ttgir``: with the register
    layouts Triton chose), LLVM IR, PTX and machine code (``.sass``, from cuobjdump unless given) as
    ``folder/stem.<form>``; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = []
    forms = {k: compiled.asm[k] for k in _DUMP_STAGES if k in compiled.asm}
    forms["sass"] = _cuobjdump(compiled.asm["cubin"], "-sass") if sass is None else sass
    for form, text in forms.items():
        path = os.path.join(folder, f"{stem}.{form}")
        with open(path, "w") as f:
            f.write(text if isinstance(text, str) else text.decode())
        written.append(path)
    return written


def _slug(*parts) -> str:
    """A file-name stem from the parts: characters other than letters, digits and _ become _, empty parts go."""
    return ".".join(q for q in (re.sub(r"[^A-Za-z0-9_]+", "_", str(p)).strip("_") for p in parts) if q)


def compile_report(arch=90, cases=None, batch: int = 32, sms: int | None = None, progress: bool = False,
                   config=None, dump: str | None = None):
    """Compile every kernel the chosen cases launch for ``sm_<arch>``; returns :class:`KernelRow` s.

    Args:
        arch: compute capability (see :func:`parse_arch`).
        cases: names from :data:`CASES` (default: all).
        batch: the batch size of the launches (it sets the grids, not the kernels).
        sms: SM count of the card (default: the common card of ``arch`` in :data:`ARCHES`).
        progress: print a line per case to stderr.
        config: KernelConfig fields (a dict, or text for :func:`parse_config`) applied under every
            case's own, e.g. ``{"bwd_num_warps": 4}`` to see what other tiles compile to.
        dump: a folder to write each distinct kernel's IR, PTX and machine code to
            (:func:`dump_kernel`; files ``<case>.<kernel>.<variant>.<dtype>.<form>``).

    Raises:
        ValueError: an unknown case, architecture or KernelConfig field or value, or a batch or SM count below 1.
        RuntimeError: triton missing, or a kernel that does not compile (Triton's message, with the case).
    """
    arch = parse_arch(arch)
    names = list(CASES) if cases is None else list(cases)
    unknown = [c for c in names if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if int(batch) < 1:
        raise ValueError(f"batch={batch} must be at least 1")
    if sms is not None and int(sms) < 1:
        raise ValueError(f"sms={sms} must be at least 1 (or left out: the card's own)")
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compiling kernels for a GPU needs a process without TRITON_INTERPRET=1: the interpreter "
                           "replaces Triton's own library functions when triton is imported")
    sms = int(sms or ARCHES[arch].sms)
    from vmunet_monai.ops.triton_scan import kernel_config

    base = kernel_config()
    try:
        tiles = base.replace(**parse_config(config or {}))
    except TypeError as exc:  # an unknown field
        raise ValueError(str(exc)) from None
    rows: list[KernelRow] = []
    usage_cache: dict = {}
    for i, name in enumerate(names):
        if progress:
            import sys

            print(f"[{i + 1}/{len(names)}] {name}: {CASES[name][0]}", file=sys.stderr, flush=True)

        def on_compiled(kernel, compiled, grid, kwargs, args, case=name):
            key = id(compiled)
            first = key not in usage_cache
            if first:
                cubin = compiled.asm["cubin"]
                sass = _cuobjdump(cubin, "-sass")
                # the compiled kernel stays referenced, so that its id is not reused while cached
                usage_cache[key] = (compiled, sass, resource_usage(cubin), loop_profile(cubin, sass),
                                    atomic_instructions(sass))
            _, sass, usage, loop, atomics = usage_cache[key]
            num_warps = compiled.metadata.num_warps
            shared = max(usage["SHARED"], int(compiled.metadata.shared))
            per_sm, limit = residency(arch, usage["REG"], num_warps, shared)
            programs = math.prod(grid)
            dtype = next(str(a.dtype).removeprefix("torch.") for a in args if isinstance(a, torch.Tensor))
            if dump and first:
                dump_kernel(compiled, dump, _slug(case, kernel, _variant(kwargs), dtype), sass)
            steps = kwargs.get("UNROLL") if kwargs.get("STEPWISE", kernel == "scan_fwd_split_kernel") else None
            passes = _step_passes(loop, steps) if kernel == "scan_bwd_kernel" and kwargs.get("STEPWISE") else None
            rows.append(KernelRow(case, kernel, _variant(kwargs), dtype, tuple(grid), programs, num_warps,
                                  usage["REG"], usage["LOCAL"] + usage["STACK"], shared, per_sm, limit,
                                  round(programs / (sms * max(per_sm, 1)), 3), loop, atomics, steps, passes))

        kernel_config(tiles)
        try:
            with target_only(arch, on_compiled):
                try:
                    CASES[name][1](int(batch))
                except Exception as exc:
                    raise RuntimeError(f"case {name!r} ({CASES[name][0]}) failed for sm_{arch}: "
                                       f"{type(exc).__name__}: {exc}") from exc
        finally:
            kernel_config(base)
    return rows


def format_report(rows, arch=90, sms: int | None = None) -> str:
    """The rows as a plain-text table, one line per distinct kernel of each case."""
    arch = parse_arch(arch)
    sms = int(sms or ARCHES[arch].sms)
    head = ("case", "kernel", "variant", "dtype", "programs", "warps", "regs", "spill B", "smem B",
            "per SM", "limit", "SM fill", "atomics", "loop: instr/ld/sfu/atomic/bar/local")
    seen, lines = set(), []
    for r in rows:
        key = (r.case, r.kernel, r.variant, r.dtype, r.grid, r.registers)
        if key in seen:
            continue
        seen.add(key)
        lines.append((r.case, r.kernel, r.variant, r.dtype, str(r.programs), str(r.num_warps), str(r.registers),
                      str(r.spill_bytes), str(r.shared_bytes), str(r.programs_per_sm), r.limited_by,
                      f"{r.sm_fill:.2f}", str(r.atomics),
                      "-" if not r.loop else "{instructions}/{loads}/{sfu}/{atomics}/{barriers}/{local}".format(**r.loop)
                      + (f" per {r.loop_steps} steps" if (r.loop_steps or 1) > 1 else "")
                      + (f"; a step: {sum(r.passes):g} in 3 passes ({' + '.join(f'{p:g}' for p in r.passes)})"
                         if r.passes else "")))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [f"triton kernels compiled for sm_{arch} ({ARCHES[arch].card}, {sms} SMs); "
           "SM fill = programs / (SMs x programs per SM); atomics: atomic instructions in the whole kernel; "
           "loop: machine instructions per iteration of the "
           "longest loop (a step of the step-loop forward, or as many as it is unrolled by, a chunk of the "
           "backward, a step of the step-loop backward's adjoint pass), and its global loads, "
           "special-function ops, atomics, barriers and local-memory accesses (spills)", fmt.format(*head)]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def run(arch="sm_90", cases="all", batch: int = 32, sms: int | None = None, out: str | None = None,
        config: str = "", dump: str | None = None) -> list:
    """What ``python -m vmunet_monai kernels`` does: compile, print the table, optionally write JSON."""
    import json
    import sys

    import triton

    names = None if cases in (None, "all") else [c for c in comma_list(cases) if c]
    fields = parse_config(config or {})
    # the outputs' places, checked before minutes of compiling
    if dump and os.path.exists(dump) and not os.path.isdir(dump):
        raise ValueError(f"--dump {dump}: a file stands there; the kernels' code goes into a folder")
    if out and os.path.isdir(out):
        raise ValueError(f"--out {out}: a folder; give the JSON file's path")
    if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ValueError(f"--out {out}: no folder {os.path.dirname(os.path.abspath(out))} to write it into")
    rows = compile_report(arch, names, batch=batch, sms=sms, progress=True, config=fields, dump=dump)
    print(format_report(rows, arch, sms))
    if dump:
        print(f"wrote each kernel's ttir, ttgir, llir, ptx and sass to {dump}/", file=sys.stderr)
    if out:
        arch_num = parse_arch(arch)
        record = dict(arch=f"sm_{arch_num}", card=ARCHES[arch_num].card, sms=int(sms or ARCHES[arch_num].sms),
                      batch=int(batch), config=fields, triton=triton.__version__, torch=torch.__version__,
                      geometry=dict(STAGE1), rows=[r.as_dict() for r in rows])
        with open(out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {out}", file=sys.stderr)
    return rows
