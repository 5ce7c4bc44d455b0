"""Backend ``cpu``: the selective scan as a C kernel, compiled at first use with the system C compiler.

The source ``csrc/selective_scan_cpu.c`` is built into a shared library with ``$CC`` (else ``cc``,
``gcc`` or ``clang``) and loaded with :mod:`ctypes`; tensors are passed as data pointers of contiguous
buffers. The library is cached under ``$VMUNET_CPU_KERNEL_CACHE`` (default ``~/.cache/vmunet_monai``),
named by a hash of the source, the flags, the compiler's version and the CPU, so a changed source,
compiler or machine gets its own build. A build goes to a temporary file that is renamed into place,
under a file lock, so several processes (e.g. torchrun ranks) starting at once are safe.

Threads: the kernel splits (batch, channel tile) items over ``torch.get_num_threads()`` pthreads.
float32 and float64 are computed in their own precision; float16/bfloat16 in float32 and cast back.
Both functions are differentiable (autograd Functions whose backward is the C reverse recurrence,
recomputing the states of each chunk from checkpoints saved by the forward).

:func:`cross_selective_scan` is SS2D's four-direction scan in one call: the kernel walks the
row-major, column-major and reversed orders of the map by index arithmetic and sums the four outputs
in place, instead of the copies and flips of the composed path.

If no compiler is found or the build fails, :func:`status` says so (with the compiler's message and
the fix) and the dispatcher falls back to the ``torch`` backend. Neither importing this module nor
:func:`status` raises.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from vmunet_monai.ops.first_order import first_order_only
from vmunet_monai.ops.recompute import RecomputeSaved

__all__ = ["selective_scan", "cross_selective_scan", "status", "build_library", "cache_dir", "CACHE_ENV", "CFLAGS_ENV"]

CACHE_ENV = "VMUNET_CPU_KERNEL_CACHE"
CFLAGS_ENV = "VMUNET_CPU_KERNEL_CFLAGS"  # extra compiler flags, appended (part of the cache key)
SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan_cpu.c"
ABI_VERSION = 2
# the exponentials are our own polynomials, so no -ffast-math (which would also change the FPU mode of
# the whole process through crtfastmath.o when linking a shared library with GCC < 13)
BASE_FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math", "-pthread"]
NATIVE_FLAGS = ["-march=native"]
FIX = (
    "install a C compiler (Debian/Ubuntu: `apt-get install gcc`; conda: `conda install -c conda-forge c-compiler`) "
    "or point $CC at one; meanwhile the 'torch' backend is used"
)


class _Args(ctypes.Structure):
    """Mirror of ``ss_args`` in the C source (all 64-bit fields, so no padding questions)."""

    _fields_ = [
        (name, ctypes.c_int64)
        for name in (
            "batch", "dim", "length", "nstate", "b_groups", "c_groups", "chunk", "softplus", "nthreads", "cross",
            "height", "width",
        )
    ] + [
        (name, ctypes.c_void_p)
        for name in (
            "u", "delta", "A", "B", "C", "D", "z", "delta_bias", "y", "last_state", "checkpoints", "dy", "dlast",
            "du", "ddelta", "dz", "dA", "dB", "dC", "dD", "ddelta_bias",
        )
    ]


def cache_dir() -> Path:
    """Where built libraries are kept: ``$VMUNET_CPU_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/vmunet_monai``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmunet_monai"


def _compiler() -> list[str] | None:
    """The compiler command: $CC (may carry flags), else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def _cpu_signature() -> str:
    """Identifies the instruction set a -march=native build may use, so a shared cache never hands a
    library built on one CPU to another."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features", "model name")):
                    sig += line
                if line.strip() == "":
                    break
    except OSError:
        sig += platform.processor()
    return sig


def _run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _tail(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def build_library(cache: Path | None = None, cc: list[str] | None = None) -> tuple[Path | None, str]:
    """Build (or find in the cache) the kernel library.

    Args:
        cache: directory to keep the library in; default :func:`cache_dir`.
        cc: compiler command; default :func:`_compiler` ($CC, cc, gcc, clang).

    Returns:
        (path of the library, detail) or (None, why the build failed).
    """
    cc = cc if cc is not None else _compiler()
    if not cc:
        return None, "no C compiler found ($CC is unset and none of cc, gcc, clang is on PATH)"
    try:
        source = SOURCE.read_bytes()
    except OSError as exc:
        return None, f"the kernel source {SOURCE} cannot be read: {exc}"
    try:
        version = _run(cc + ["--version"], timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"the C compiler {shlex.join(cc)!r} cannot be run: {exc}"
    if version.returncode != 0:
        return None, f"`{shlex.join(cc)} --version` failed: {_tail(version.stderr or version.stdout)}"
    cache = Path(cache) if cache is not None else cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return None, f"cannot create the kernel cache directory {cache}: {exc}; set ${CACHE_ENV} to a writable one"

    extra = shlex.split(os.environ.get(CFLAGS_ENV, ""))
    errors = []
    for flags in (BASE_FLAGS + NATIVE_FLAGS + extra, BASE_FLAGS + extra):  # native first; a plain build where -march=native fails
        key = hashlib.sha256(
            b"\0".join([source, " ".join(cc + flags).encode(), version.stdout.encode(), _cpu_signature().encode(),
                        str(ABI_VERSION).encode()])
        ).hexdigest()[:20]
        target = cache / f"selective_scan_cpu-{key}.so"
        if target.exists():
            return target, f"cached build {target}"
        with _file_lock(cache / f"selective_scan_cpu-{key}.lock"):
            if target.exists():  # another process built it while we waited
                return target, f"cached build {target}"
            fd, tmp = tempfile.mkstemp(prefix=f".selective_scan_cpu-{key}-", suffix=".so", dir=cache)
            os.close(fd)
            cmd = cc + flags + ["-I", str(SOURCE.parent), str(SOURCE), "-o", tmp, "-lm"]
            try:
                proc = _run(cmd)
            except (OSError, subprocess.SubprocessError) as exc:
                proc = subprocess.CompletedProcess(cmd, -1, "", str(exc))
            if proc.returncode == 0:
                os.replace(tmp, target)  # atomic: readers see no half-written library
                return target, f"built {target} with `{shlex.join(cc + flags)}`"
            try:
                os.unlink(tmp)
            except OSError:
                pass
            errors.append(f"`{shlex.join(cmd)}` failed:\n{_tail(proc.stderr or proc.stdout)}")
    return None, errors[-1]


class _file_lock:
    """An exclusive advisory lock on a file (a no-op where fcntl does not exist)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        try:
            import fcntl

            self.fh = open(self.path, "a+")
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except (ImportError, OSError):
            self.fh = None
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            import fcntl

            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


# (compiler, cache dir) -> (library or None, detail); keyed so a changed $CC or cache gets its own answer
_LIBRARIES: dict[tuple, tuple[ctypes.CDLL | None, str]] = {}
_LOCK = threading.Lock()


def _library() -> tuple[ctypes.CDLL | None, str]:
    cc = _compiler()
    key = (tuple(cc) if cc else None, str(cache_dir()))
    with _LOCK:
        if key not in _LIBRARIES:
            _LIBRARIES[key] = _load(cc)
        return _LIBRARIES[key]


def _load(cc) -> tuple[ctypes.CDLL | None, str]:
    try:
        path, detail = build_library(cc=cc)
        if path is None:
            return None, detail
        lib = ctypes.CDLL(str(path))
        if lib.ss_abi_version() != ABI_VERSION:
            return None, f"{path} has ABI {lib.ss_abi_version()}, expected {ABI_VERSION}; delete it to rebuild"
        for name in ("ss_forward_f32", "ss_forward_f64", "ss_backward_f32", "ss_backward_f64"):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.POINTER(_Args)]
            fn.restype = ctypes.c_int
        lib_detail = _self_check(lib)
        if lib_detail:
            return None, f"{path}: {lib_detail}"
        return lib, detail
    except Exception as exc:  # status() must never raise
        return None, f"loading the CPU kernel failed: {exc!r}"


def _pattern(shape: tuple[int, ...], scale: float, phase: float) -> torch.Tensor:
    """Fixed float64 values in [-scale, scale] (a sine of the element index), made without torch's random generator."""
    count = math.prod(shape)
    return torch.tensor([scale * math.sin(1.3 * i + phase) for i in range(count)], dtype=torch.float64).reshape(shape)


def _untransformed():
    """A context in which the self-check runs the same whatever called the first scan: no torch.func transform
    (vmap, grad, jacrev...) applies to its operations. (Autograd records nothing of its float64 constants, and
    autocast leaves float64 alone; a no_grad or autocast region would be recorded by torch.export when the first
    scan of a process is the one it traces, and the program would fail its check when loaded.)"""
    stack = contextlib.ExitStack()
    disable_functorch = getattr(torch._C, "_DisableFuncTorch", None)
    if disable_functorch is not None:
        stack.enter_context(disable_functorch())
    return stack


def _self_check(lib) -> str:
    """A tiny scan against the reference, so a miscompiled library is reported instead of used.

    Its inputs are fixed values, not random draws, and it runs outside any torch.func transform: the first
    scan of a process may run inside ``torch.func.vmap``, where a random draw is refused, and a failed check
    marks the kernel unavailable for the rest of the process."""
    from vmunet_monai.ops.reference import selective_scan_reference

    dim, n, length = 3, 2, 5
    with _untransformed():
        args = (
            _pattern((1, dim, length), 1.0, 0.1),  # u
            _pattern((1, dim, length), 1.0, 0.7),  # delta
            _pattern((dim, n), 0.4, 1.3) - 0.9,  # A, negative
            _pattern((1, 1, n, length), 1.0, 1.9),  # B
            _pattern((1, 1, n, length), 1.0, 2.5),  # C
            _pattern((dim,), 1.0, 3.1),  # D
            _pattern((1, dim, length), 1.0, 3.7),  # z
            _pattern((dim,), 0.5, 4.3),  # delta_bias
        )
        want = selective_scan_reference(*args, delta_softplus=True)
        got = _forward(lib, *args, True, False, False)[0]
        err = ((got - want).norm() / want.norm()).item()
    return "" if err < 1e-12 else f"the built kernel disagrees with the reference (relative error {err:.3g})"


def status() -> tuple[bool, str, str]:
    """(available, detail, fix): whether the kernel builds and loads here, why not, and what to do."""
    try:
        lib, detail = _library()
    except Exception as exc:
        return False, f"CPU kernel check failed: {exc!r}", FIX
    if lib is None:
        if detail.startswith("cannot create the kernel cache directory"):  # a compiler is there: the folder is not
            return False, detail, (f"set ${CACHE_ENV} to a folder you can write; meanwhile the 'torch' backend is "
                                   "used")
        return False, detail, FIX
    return True, f"C kernel ({detail}); threads follow torch.get_num_threads()", ""


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _chunk(n_state: int) -> int:
    # states of one chunk for a 16-channel tile stay in L2 (64 steps x 16 states)
    return max(4, min(64, 1024 // max(1, n_state)))


def _groups(x: torch.Tensor) -> int:
    return 0 if x.dim() == 2 else (1 if x.dim() == 3 else x.shape[1])


def _fill_args(u, delta, A, B, C, D, z, delta_bias, softplus, map_size=None):
    """Kernel arguments; ``map_size`` = (H, W) selects cross mode (u is then (batch, Di, H*W))."""
    batch, dim, length = u.shape
    a = _Args()
    if map_size is not None:
        a.cross, (a.height, a.width), dim = 1, map_size, 4 * dim
    a.batch, a.dim, a.length, a.nstate = batch, dim, length, A.shape[1]
    a.b_groups, a.c_groups = _groups(B), _groups(C)
    a.chunk = _chunk(A.shape[1])
    a.softplus = int(bool(softplus))
    # threads add their partial gradients in whatever order they finish; under
    # torch.use_deterministic_algorithms(True) one thread keeps every sum in one order
    a.nthreads = 1 if torch.are_deterministic_algorithms_enabled() else max(1, torch.get_num_threads())
    a.u, a.delta, a.A, a.B, a.C = _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C)
    a.D, a.z, a.delta_bias = _ptr(D), _ptr(z), _ptr(delta_bias)
    return a


def _forward(lib, u, delta, A, B, C, D, z, delta_bias, softplus, last_state, checkpoints, map_size=None):
    """Runs the forward on contiguous tensors of one dtype (float32/float64)."""
    batch, _, length = u.shape
    n_state = A.shape[1]
    a = _fill_args(u, delta, A, B, C, D, z, delta_bias, softplus, map_size)
    y = torch.empty_like(u)
    h = u.new_empty((batch, a.dim, n_state)) if last_state else None
    ck = u.new_empty((batch, a.dim, -(-length // a.chunk), n_state)) if checkpoints else None
    a.y, a.last_state, a.checkpoints = _ptr(y), _ptr(h), _ptr(ck)
    if u.numel():
        fn = lib.ss_forward_f64 if u.dtype == torch.float64 else lib.ss_forward_f32
        if fn(ctypes.byref(a)) != 0:
            raise MemoryError("the CPU selective-scan kernel could not allocate its work buffers")
    elif last_state:
        h.zero_()
    return y, h, ck


def _prepare(x: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if x is None else x.detach().to(dtype).contiguous()


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        lib, detail = _library()
        if lib is None:
            raise RuntimeError(f"scan backend 'cpu' is not available: {detail}. Fix: {FIX}")
        compute = torch.float64 if u.dtype == torch.float64 else torch.float32
        tensors = [_prepare(t, compute) for t in (u, delta, A, B, C, D, z, delta_bias)]
        need_grad = any(ctx.needs_input_grad[:8])
        y, h, ck = _forward(lib, *tensors, delta_softplus, return_last_state, need_grad)
        ctx.softplus = bool(delta_softplus)
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, z, delta_bias)]
        ctx.has = [t is not None for t in tensors]
        if need_grad:
            ctx.save_for_backward(*[t for t in tensors if t is not None], ck)
        y = y.to(u.dtype)
        if return_last_state:
            return y, h
        return y

    @staticmethod
    @first_order_only("scan backend 'cpu'")
    def backward(ctx, dy, dlast=None):
        grads = _backward(ctx, dy, dlast)
        out = [
            None if (g is None or not need) else g.to(dtype)
            for g, need, dtype in zip(grads, ctx.needs_input_grad[:8], ctx.dtypes)
        ]
        return (*out, None, None)


def _backward(ctx, dy, dlast=None, map_size=None):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias) in the compute dtype."""
    lib, _ = _library()
    saved = list(ctx.saved_tensors)
    ck = saved.pop()
    it = iter(saved)
    u, delta, A, B, C, D, z, delta_bias = [next(it) if has else None for has in ctx.has]
    compute = u.dtype
    a = _fill_args(u, delta, A, B, C, D, z, delta_bias, ctx.softplus, map_size)
    dy = dy.to(compute).contiguous()
    dlast = None if dlast is None else dlast.to(compute).contiguous()
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA, dB, dC = torch.zeros_like(A), torch.zeros_like(B), torch.zeros_like(C)
    dD = torch.zeros_like(D) if D is not None else None
    dbias = torch.zeros_like(delta_bias) if delta_bias is not None else None
    a.checkpoints, a.dy, a.dlast = _ptr(ck), _ptr(dy), _ptr(dlast)
    a.du, a.ddelta, a.dz, a.dA, a.dB, a.dC = _ptr(du), _ptr(ddelta), _ptr(dz), _ptr(dA), _ptr(dB), _ptr(dC)
    a.dD, a.ddelta_bias = _ptr(dD), _ptr(dbias)
    if u.numel():
        fn = lib.ss_backward_f64 if compute == torch.float64 else lib.ss_backward_f32
        if fn(ctypes.byref(a)) != 0:
            raise MemoryError("the CPU selective-scan kernel could not allocate its work buffers")
    return [du, ddelta, dA, dB, dC, dD, dz, dbias]


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Selective scan on the CPU kernel; semantics of :func:`vmunet_monai.ops.selective_scan`.

    Returns:
        y in u's dtype, and the last state (batch, dim, N) in the compute dtype if ``return_last_state``.

    Raises:
        ValueError: shapes that do not fit together (the kernel indexes raw memory, so they are checked first).
        RuntimeError: the kernel is not available here (see :func:`status`).
    """
    from vmunet_monai.ops.dispatch import _check_scan_args

    _check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def _prepared(source, shape, dtype):
    return lambda: _prepare(source().reshape(shape), dtype)


class _CrossSelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        lib, detail = _library()
        if lib is None:
            raise RuntimeError(f"scan backend 'cpu' is not available: {detail}. Fix: {FIX}")
        b, di, h, w = u.shape
        n = A.shape[1]
        compute = torch.float64 if u.dtype == torch.float64 else torch.float32
        # every tensor keeps its map layout; the kernel reads each direction's order by index arithmetic
        flat = [
            _prepare(u.reshape(b, di, h * w), compute),
            _prepare(delta.reshape(b, 4 * di, h * w), compute),
            _prepare(A, compute),
            _prepare(B.reshape(b, 4, n, h * w), compute),
            _prepare(C.reshape(b, 4, n, h * w), compute),
            _prepare(D, compute),
            None,
            _prepare(delta_bias, compute),
        ]
        need_grad = any(ctx.needs_input_grad[:7])
        rc = RecomputeSaved.current()
        if rc is not None and need_grad:  # copies made only for this kernel are rebuilt, not kept
            for i, src in ((0, u), (1, delta), (3, B), (4, C)):
                if flat[i].untyped_storage().data_ptr() != src.untyped_storage().data_ptr():
                    rc.register(flat[i], _prepared(rc.source(src), tuple(flat[i].shape), compute))
        y, _, ck = _forward(lib, *flat, delta_softplus, False, need_grad, map_size=(h, w))
        ctx.softplus = bool(delta_softplus)
        ctx.map = (b, di, h, w, n)
        ctx.dtypes = [None if t is None else t.dtype for t in (u, delta, A, B, C, D, None, delta_bias)]
        ctx.has = [t is not None for t in flat]
        if need_grad:
            ctx.save_for_backward(*[t for t in flat if t is not None], ck)
        return y.reshape(b, di, h, w)

    @staticmethod
    @first_order_only("scan backend 'cpu'")
    def backward(ctx, dy):
        b, di, h, w, n = ctx.map
        grads = _backward(ctx, dy.reshape(b, di, h * w), None, map_size=(h, w))
        shapes = [(b, di, h, w), (b, 4, di, h, w), None, (b, 4, n, h, w), (b, 4, n, h, w), None, None, None]
        needs = list(ctx.needs_input_grad[:5]) + [ctx.needs_input_grad[5], False, ctx.needs_input_grad[6]]
        out = []
        for g, need, dtype, shape in zip(grads, needs, ctx.dtypes, shapes):
            if g is None or not need:
                out.append(None)
            else:
                out.append((g.reshape(shape) if shape else g).to(dtype))
        u_g, delta_g, A_g, B_g, C_g, D_g, _, bias_g = out
        return u_g, delta_g, A_g, B_g, C_g, D_g, bias_g, None


def cross_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """SS2D's four-direction scan in one kernel call; semantics of :func:`vmunet_monai.ops.cross_selective_scan`.

    The four scan orders are walked by index arithmetic on the map, so no re-ordered copies of u,
    delta, B, C or of the outputs are made, and the four outputs are summed in place.

    Returns:
        (batch, Di, H, W) in float64 for float64 inputs, else float32.

    Raises:
        ValueError: shapes that do not fit together.
    """
    if u.dim() != 4:
        raise ValueError(f"u must be (batch, Di, H, W), got shape {tuple(u.shape)}")
    b, di, h, w = u.shape
    n = A.shape[1] if A.dim() == 2 else -1
    expect = {"delta": (b, 4, di, h, w), "A": (4 * di, n), "B": (b, 4, n, h, w), "C": (b, 4, n, h, w)}
    for label, t in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        if tuple(t.shape) != expect[label]:
            raise ValueError(f"{label} must be {expect[label]}, got {tuple(t.shape)}")
    for label, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (4 * di,):
            raise ValueError(f"{label} must be ({4 * di},), got {tuple(t.shape)}")
    fn, args = cross_scan_function(u, delta, A, B, C, D, delta_bias, delta_softplus)
    return fn.apply(*args)


def cross_scan_function(u, delta, A, B, C, D, delta_bias, delta_softplus, dt_weight=None):
    """The autograd Function of a four-direction scan of checked inputs and its arguments (its
    gradients come back in the inputs' shapes); full-rank step sizes only."""
    if dt_weight is not None:
        raise ValueError("the cpu kernel takes full-rank step sizes; project the factors first (ops.full_rank_delta)")
    return _CrossSelectiveScanCPU, (u, delta, A, B, C, D, delta_bias, delta_softplus)
