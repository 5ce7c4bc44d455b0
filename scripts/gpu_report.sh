#!/usr/bin/env bash
# Every GPU measurement docs/PERFORMANCE.md reports, in one run on one CUDA machine.
#
# Runs, in this order, writing each output to OUT/:
#   1. the CUDA tests (tests/test_scan.py, test_scan_triton.py, test_recompute.py, test_cuda_graphs.py)
#   2. scripts/bench_ss2d_gpu.py --sweep      (stage-1 fused scan: tiles, bandwidth, keep_states,
#                                              segments sweep at batch 1 and 32, channels-last),
#      once on row-major and once on channels-last inputs (--layout channels_last)
#   3. benchmark --device cuda --batch 32 [--reference REF] --store_activations --cuda_graphs
#      --deterministic --baselines unet,swin_unetr (ours vs the official VM-UNet and MONAI's U-Net and
#       SwinUNETR: training/inference img/s, batch-1 latency, peak memory, with and without SS2D
#       recomputation, and in deterministic mode)
#   4. network_options: the same with --channels_last_scan true --fused_norm_gate true --fused_dt_proj true
#      (the options still off by default)
#   5. network_compile: benchmark --compile true (torch.compile rows, marked +compile)
#   5b. network_bwd_steps: step 4 with --kernel_config bwd_stepwise=true (the step-loop backward)
#   6. kernels: the compiled view of every triton kernel for this GPU's architecture (registers,
#      spills, SM fill, the machine code of each main loop), next to the timings it explains; each
#      kernel's Triton IR, PTX and machine code in OUT/kernels_ir/
# Each step's exit status is recorded in OUT/status.txt; a failing step does not stop the others.
# STEPS picks steps by name (tests scan scan_channels_last network network_options network_compile
# network_bwd_steps kernels), so
# a machine that limits the length of one command can run them in several calls into the same OUT.
#
# Two more steps, not in the default set, answer the open questions in the least GPU time
# (STEPS="scan_quick network_variants", meant to fit one 10-minute command once mamba-ssm is built):
#   scan_quick        bench_ss2d_gpu.py --quick: the default kernels in fp32 and bf16, the step-loop
#                     backward against the associative scans, batch-1 segments, mamba-ssm's kernel
#   network_variants  benchmark --reference REF --cuda_graphs with the variants "segments" (segments=0:
#                     sequences split where a launch leaves most of the GPU idle, as at batch 1), "fast"
#                     (channels-last scan, fused norm and gate, fused step-size projection) and
#                     "fast_steps" (the same with the step-loop backward and segments=0), all rows in one
#                     run beside the official model
#
# Usage: [STEPS="tests scan"] bash scripts/gpu_report.sh OUT [REF]
#   OUT   folder for the logs and JSON results (created)
#   REF   checkout of the official JCruan519/VM-UNet, timed beside ours (optional)
# Environment:
#   PYTHON=python3   interpreter with torch (CUDA), triton, monai and this package importable
#   BACKENDS=triton,mamba_ssm   scan backends for the network benchmark (unavailable ones are skipped)
set -uo pipefail

OUT=${1:?usage: bash scripts/gpu_report.sh OUT [REF]}
REF=${2:-}
PYTHON=${PYTHON:-python3}
BACKENDS=${BACKENDS:-triton,mamba_ssm}
STEPS=${STEPS:-tests scan scan_channels_last network network_options network_compile network_bwd_steps kernels}
mkdir -p "$OUT"
touch "$OUT/status.txt"

"$PYTHON" - <<'EOF' || exit 1
import sys
try:
    import torch
except ImportError as exc:
    sys.exit(f"error: {exc}; run with PYTHON pointing at an interpreter that has a CUDA build of torch")
if not torch.cuda.is_available():
    sys.exit(f"error: torch {torch.__version__} sees no CUDA device; this script measures a GPU")
EOF

step() {  # step NAME CMD...: run (if NAME is in STEPS), log to OUT/NAME.log, record the exit status
    local name=$1; shift
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name: $*"
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/status.txt"
}

REFARGS=()
[ -n "$REF" ] && REFARGS=(--reference "$REF")

step tests "$PYTHON" -m pytest -q -rs tests/test_scan.py tests/test_scan_triton.py tests/test_recompute.py \
    tests/test_norm_gate.py tests/test_cuda_graphs.py tests/test_compile.py
step scan_quick "$PYTHON" scripts/bench_ss2d_gpu.py --quick --out "$OUT/scan_quick.json"
step network_variants "$PYTHON" -m vmunet_monai benchmark --device cuda --batch 32 --backends "$BACKENDS" \
    "${REFARGS[@]}" --cuda_graphs true --variants "segments:segments=0;fast;fast_steps:fast,bwd_stepwise=true,segments=0" \
    --out "$OUT/network_variants.json"
step scan "$PYTHON" scripts/bench_ss2d_gpu.py --sweep --out "$OUT/scan.json"
step scan_channels_last "$PYTHON" scripts/bench_ss2d_gpu.py --sweep --layout channels_last \
    --out "$OUT/scan_channels_last.json"
step network "$PYTHON" -m vmunet_monai benchmark --device cuda --batch 32 --backends "$BACKENDS" \
    "${REFARGS[@]}" --store_activations true --cuda_graphs true --deterministic true --baselines unet,swin_unetr \
    --out "$OUT/network.json"
step network_options "$PYTHON" -m vmunet_monai benchmark --device cuda --batch 32 --backends "$BACKENDS" \
    "${REFARGS[@]}" --channels_last_scan true --fused_norm_gate true --fused_dt_proj true \
    --out "$OUT/network_options.json"
step network_compile "$PYTHON" -m vmunet_monai benchmark --device cuda --batch 32 --backends "$BACKENDS" \
    "${REFARGS[@]}" --compile true --out "$OUT/network_compile.json"
step network_bwd_steps "$PYTHON" -m vmunet_monai benchmark --device cuda --batch 32 --backends triton \
    "${REFARGS[@]}" --channels_last_scan true --fused_norm_gate true --fused_dt_proj true \
    --kernel_config bwd_stepwise=true --out "$OUT/network_bwd_steps.json"
ARCH=$("$PYTHON" -c "import torch; print('sm_%d%d' % torch.cuda.get_device_capability())")
step kernels "$PYTHON" -m vmunet_monai kernels --arch "$ARCH" --out "$OUT/kernels.json" --dump "$OUT/kernels_ir"
echo "results in $OUT (status.txt, *.log, *.json)"
