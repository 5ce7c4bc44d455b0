#!/usr/bin/env bash
# Build and install mamba-ssm's CUDA selective scan for this machine's GPU architecture only.
#
# mamba-ssm's setup.py compiles for every architecture from sm_75 to sm_121 (a long build); this
# script patches the unpacked sdist so nvcc targets only the GPU that torch sees (about 3 minutes
# for sm_90 on 16 cores), then pip-installs it into the current Python without build isolation,
# so it compiles against the installed CUDA torch.
#
# Usage: bash build_mamba_ssm.sh [SDIST.tar.gz]   (scripts/build_mamba_ssm.sh in a checkout; the path
#        `python -m vmunet_monai doctor` prints for an installed package)
#   SDIST        a downloaded mamba-ssm sdist (offline machines); default: pip download it
# Environment:
#   PYTHON=python3            interpreter to install into
#   MAMBA_VERSION=2.3.2.post1 version to download when no sdist is given
#   CUDA_ARCH=9.0             override the detected compute capability
#   MAX_JOBS=$(nproc)         parallel compile jobs
#   PIP_DEPS=0                1: let pip install mamba-ssm's Python dependencies too
set -euo pipefail

PYTHON=${PYTHON:-python3}
MAMBA_VERSION=${MAMBA_VERSION:-2.3.2.post1}
SDIST=${1:-}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

command -v nvcc >/dev/null || { echo "error: nvcc not found; install the CUDA toolkit matching torch's CUDA" >&2; exit 1; }
ARCH=${CUDA_ARCH:-$("$PYTHON" - <<'EOF'
import sys
try:
    import torch
except ImportError as exc:
    sys.exit(f"error: {sys.executable} cannot import torch ({exc}); set PYTHON to the interpreter with the CUDA build of torch")
if not torch.cuda.is_available():
    sys.exit("error: torch sees no CUDA device (torch %s, CUDA build: %s)" % (torch.__version__, torch.version.cuda))
print("%d.%d" % torch.cuda.get_device_capability())
EOF
)}
CC_NUM=${ARCH/./}
# torch passes $CC to nvcc as its host compiler; make sure nvcc accepts it, else use the system gcc
probe="$WORK/probe.cu"; echo 'int main() { return 0; }' > "$probe"
if ! nvcc -ccbin "${CC:-gcc}" -c "$probe" -o "$WORK/probe.o" >/dev/null 2>&1; then
  echo "note: nvcc rejects host compiler ${CC:-gcc}; using /usr/bin/gcc and /usr/bin/g++" >&2
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
  nvcc -ccbin "$CC" -c "$probe" -o "$WORK/probe.o" || { echo "error: nvcc cannot compile with $CC either" >&2; exit 1; }
fi
echo "building mamba-ssm for sm_${CC_NUM} with nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"

if [[ -z "$SDIST" ]]; then
  "$PYTHON" -m pip download --no-deps --no-binary :all: "mamba-ssm==${MAMBA_VERSION}" -d "$WORK" >/dev/null
  SDIST=$(ls "$WORK"/mamba_ssm-*.tar.gz)
fi
[[ -f "$SDIST" ]] || { echo "error: sdist $SDIST not found" >&2; exit 1; }
tar -xzf "$SDIST" -C "$WORK"
SRC=$(ls -d "$WORK"/mamba_ssm-*/)

# keep only this architecture: drop the -gencode pairs setup.py appends, add ours before use
"$PYTHON" - "$SRC/setup.py" "$CC_NUM" <<'EOF'
import re, sys
path, cc = sys.argv[1], sys.argv[2]
text = open(path).read()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if anchor not in text:
    sys.exit(f"error: {path} has changed shape (no line starting {anchor.strip()!r}); patch it by hand")
keep = (
    "    cc_flag = [f for i, f in enumerate(cc_flag) if not (f == '-gencode' or f.startswith('arch=compute_'))]\n"
    f"    cc_flag += ['-gencode', 'arch=compute_{cc},code=sm_{cc}']\n"
)
open(path, "w").write(text.replace(anchor, keep + anchor, 1))
EOF

export MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=FALSE TORCH_CUDA_ARCH_LIST="$ARCH"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
DEPS=--no-deps
[[ "${PIP_DEPS:-0}" == 1 ]] && DEPS=
start=$(date +%s)
(cd "$SRC" && "$PYTHON" -m pip install --no-build-isolation $DEPS --no-cache-dir .)
echo "built in $(( $(date +%s) - start )) s"
"$PYTHON" -c "import torch, selective_scan_cuda; print('selective_scan_cuda loads from', selective_scan_cuda.__file__)"
"$PYTHON" -c "import mamba_ssm.ops.selective_scan_interface" 2>/dev/null \
  || echo "note: the kernel loads, but 'import mamba_ssm' fails (missing Python dependencies?); rerun with PIP_DEPS=1"
