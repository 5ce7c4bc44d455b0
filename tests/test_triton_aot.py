"""The triton kernels compile for real GPU architectures on this CPU machine (no GPU, no CUDA driver).

Triton's interpreter, which the other triton tests use, never compiles a kernel; these tests run the
``kernels`` command in a fresh process without ``TRITON_INTERPRET`` (conftest sets it for this one) and
check what Triton's bundled ptxas reports for every kernel real SS2D layers launch.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmunet_monai.ops import triton_aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


needs_toolchain = pytest.mark.skipif(triton_aot.toolchain_problem() is not None,
                                     reason=str(triton_aot.toolchain_problem()))


def run_kernels(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton_cache")  # compile from scratch, every run
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    out = tmp_path / "kernels.json"
    proc = subprocess.run([sys.executable, "-m", "vmunet_monai", "kernels", *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


def _check_step_backward(report, table, dump):
    """KernelConfig(bwd_stepwise=True) on sm_90 (cases ss2d_bwd_steps, and ss2d_fast_bwd_steps in four
    segments): one launch for the four directions, a thread per channel, and well under half the
    machine instructions per (channel, state, step) of the associative-scan backward, compiled in the
    same run."""
    bwd = {c: [r for r in report["rows"] if r["case"] == c and r["kernel"] == "scan_bwd_kernel"]
           for c in ("ss2d", "ss2d_bwd_steps", "ss2d_fast_bwd_steps")}
    chunked = bwd["ss2d"]
    assert len(chunked) == 4 and all(r["passes"] is None for r in chunked)
    (step,) = bwd["ss2d_bwd_steps"]
    seg = {r["variant"]: r for r in bwd["ss2d_fast_bwd_steps"]}
    assert set(seg) == {"phase 1 all four", "phase 2 all four"}, seg
    assert step["variant"] == "all four" and tuple(step["grid"]) == (6, 4, 4), step
    assert all(tuple(r["grid"]) == (6, 16, 4) for r in seg.values()), seg  # four directions x four segments
    for r in (step, seg["phase 2 all four"]):
        assert r["num_warps"] == 1 and r["spill_bytes"] == 0 and r["loop"]["local"] == 0, r
        # recompute, adjoint, sums over channels: three loops, the first two unrolled (KernelConfig.unroll)
        # and the adjoint the longest
        steps = r["loop_steps"]
        assert steps == 2 and len(r["passes"]) == 3, r
        assert max(r["passes"]) == r["passes"][1] == r["loop"]["instructions"] / steps, r
        # one exp2 per state in the adjoint pass (the softplus slope comes from the scratch)
        assert r["loop"]["sfu"] == 16 * steps, r
    # the next step's inputs are loaded while a step computes: registers for two steps, still 8 programs
    # (8 warps) per SM where stage 1 at batch 32 has about 6 per SM to place
    assert step["programs_per_sm"] >= 8, step
    # a thread-step of the step loop covers one channel's 16 states; a chunk of the associative scans
    # covers (4 channels x 16 states x 16 steps) / 64 threads = 16 values per thread too
    assert sum(step["passes"]) <= 0.45 * min(r["loop"]["instructions"] for r in chunked), (step, chunked)
    assert step["loop"]["barriers"] == 0, step  # no layout conversion in the adjoint pass's loop
    assert "in 3 passes" in table
    # phase 1 of the segments runs only the adjoint recurrence: no scratch, no atomics, a fraction of
    # phase 2's work
    one, two = seg["phase 1 all four"], seg["phase 2 all four"]
    assert one["atomics"] == 0 and one["passes"] is None and one["loop"]["sfu"] <= 20 * one["loop_steps"], one
    assert one["loop"]["instructions"] < 0.35 * sum(two["passes"]) * two["loop_steps"], (one, two)
    # the scratch's states, step sizes and slopes are loaded in the layout they were stored in: no
    # conversion through shared memory every step (Triton 3.9; 3.6 converts, see docs/PERFORMANCE.md)
    for stem in ("ss2d_bwd_steps.scan_bwd_kernel.all_four.float32",
                 "ss2d_fast_bwd_steps.scan_bwd_kernel.phase_2_all_four.bfloat16"):
        ir = Path(dump / f"{stem}.ttgir").read_text()
        loaded = set(re.findall(r"%((?:hv|dt|slope)_\d+) = tt\.load", ir))
        assert {name.split("_")[0] for name in loaded} == {"hv", "dt", "slope"}, stem
        converted = set(re.findall(r"ttg\.convert_layout %([A-Za-z_0-9]+)", ir))
        assert not converted & loaded, (stem, converted & loaded)
        assert not {c for c in converted if re.fullmatch(r"(h|g)(_\d+)?", c)}, stem


@needs_toolchain
def test_every_ss2d_kernel_compiles_for_h100_without_spills_in_its_loops(tmp_path):
    dump = tmp_path / "ir"
    report, table = run_kernels(tmp_path, "--arch", "sm_90", "--cases",
                                "ss2d,ss2d_fast,ss2d_deterministic,ss2d_bwd_steps,ss2d_fast_bwd_steps",
                                "--batch", "4", "--dump", str(dump))
    _check_step_backward(report, table, dump)
    assert report["arch"] == "sm_90" and report["sms"] == 132 and report["batch"] == 4
    # KernelConfig(deterministic=True), here with the fast options (factor gradients too): not one
    # atomic instruction in any scan kernel, forward or backward, so no result depends on the order
    # the GPU runs programs in; the default kernels merge directions and gradients with atomics
    det = [r for r in report["rows"] if r["case"] == "ss2d_deterministic" and r["kernel"].startswith("scan")]
    assert {r["kernel"] for r in det} == {"scan_fwd_kernel", "scan_bwd_kernel"} and len(det) == 5
    assert all(r["atomics"] == 0 and r["loop"]["local"] == 0 for r in det), det
    assert all(r["atomics"] > 0 for r in report["rows"] if r["case"] == "ss2d" and r["kernel"].startswith("scan"))
    rows = [r for r in report["rows"] if r["case"] in ("ss2d", "ss2d_fast")]
    by_case = {c: [r for r in rows if r["case"] == c] for c in ("ss2d", "ss2d_fast")}
    for case, case_rows in by_case.items():
        fwd = [r for r in case_rows if r["kernel"] == "scan_fwd_kernel"]
        bwd = {r["variant"] for r in case_rows if r["kernel"] == "scan_bwd_kernel"}
        # one forward launch for the four directions: (ceil(192 / 64), 4, batch) programs
        assert [(r["variant"], tuple(r["grid"])) for r in fwd] == [("all four", (3, 4, 4))], case
        assert bwd == {"rows", "cols", "rows reversed", "cols reversed"}, case
    assert by_case["ss2d"][0]["dtype"] == "float32"
    assert {r["dtype"] for r in by_case["ss2d_fast"] if r["kernel"].startswith("scan")} == {"bfloat16"}
    assert {"norm_gate_fwd_kernel", "norm_gate_bwd_kernel"} <= {r["kernel"] for r in by_case["ss2d_fast"]}
    for r in rows:
        assert 16 <= r["registers"] <= 255, r
        # a spilling step loop would read its state from local memory: the loops never touch it, and
        # the forwards and the float32 backward spill nothing at all (the fast-option backwards sit at
        # 255 registers and may spill a few bytes outside their chunk loop)
        assert r["loop"] is None or r["loop"]["local"] == 0, r
        assert r["spill_bytes"] == 0 or (r["kernel"] == "scan_bwd_kernel" and r["dtype"] != "float32"
                                         and r["spill_bytes"] <= 16), r
        assert r["programs_per_sm"] >= 1 and r["num_warps"] in (1, 2, 4, 8), r
        assert r["programs"] == math.prod(r["grid"])
        expected = triton_aot.residency(90, r["registers"], r["num_warps"], r["shared_bytes"])[0]
        assert r["programs_per_sm"] == expected
        if r["kernel"] == "scan_fwd_kernel":
            # the step loop runs KernelConfig.unroll (2) steps per iteration
            steps = r["loop_steps"]
            assert steps == 2, r
            # each step: one exp2 per state (N = 16) and the softplus, so the recurrence is compiled
            # once (a layout conflict made the compiler run it twice, in two layouts, for the fast
            # options), and one atomic add merging the directions
            assert 16 * steps <= r["loop"]["sfu"] <= 20 * steps and r["loop"]["atomics"] == steps, r
            # and no layout conversion through shared memory: no thread synchronisation in the step loop
            assert r["loop"]["barriers"] == 0, r
    for case in ("ss2d", "ss2d_fast"):
        fwd = next(r for r in by_case[case] if r["kernel"] == "scan_fwd_kernel")
        # the projection rows and the state share a layout; 6 programs per SM
        assert fwd["registers"] < 200 and fwd["programs_per_sm"] == 6, fwd
        # B and C of a step are 16 contiguous, aligned values each, read with vector loads (8 in
        # float32, 4 in bfloat16) instead of 32 scalar ones; plus u and delta or its 6 factors
        assert fwd["loop"]["loads"] <= 16 * fwd["loop_steps"], fwd
        # unrolled, the prefetched inputs need no copying: well under the 304 instructions a rolled
        # float32 step took (checkpoint branch included)
        assert fwd["loop"]["instructions"] <= (260 if case == "ss2d" else 360) * fwd["loop_steps"], fwd
    assert "scan_fwd_kernel" in table and "H100" in table
    # --dump: every distinct kernel's intermediate forms and machine code, named after case, kernel,
    # variant and dtype
    stem = dump / "ss2d_fast.scan_fwd_kernel.all_four.bfloat16"
    for form in ("ttir", "ttgir", "llir", "ptx", "sass"):
        assert Path(f"{stem}.{form}").stat().st_size > 0, form
    assert "#ttg.blocked" in Path(f"{stem}.ttgir").read_text()  # the register layouts Triton chose
    assert Path(f"{stem}.sass").read_text().count("MUFU.EX2") >= 16
    assert "LDG.E.128" in Path(f"{stem}.sass").read_text()
    assert "LDG.E.128" in Path(dump / "ss2d.scan_fwd_kernel.all_four.float32.sass").read_text()
    assert Path(dump / "ss2d.scan_bwd_kernel.cols_reversed.float32.sass").exists()
    assert Path(dump / "ss2d_fast.norm_gate_fwd_kernel.float32.ptx").exists()


@needs_toolchain
def test_segmented_per_direction_and_generic_scans_compile_for_a100(tmp_path):
    report, _ = run_kernels(tmp_path, "--arch", "8.0", "--cases", "ss2d_segments,ss2d_per_direction,selective_scan",
                            "--batch", "2")
    assert report["arch"] == "sm_80" and report["sms"] == 108
    split = [r for r in report["rows"] if r["kernel"] == "scan_fwd_split_kernel"]
    assert {r["variant"] for r in split} == {"phase 1 all four", "phase 2 all four"}
    assert all(tuple(r["grid"]) == (3, 16, 2) for r in split)  # four directions x four segments
    generic = [r for r in report["rows"] if r["case"] == "selective_scan"]
    # the official model's interface: (batch, 4 * 192, L) with four groups of B and C, forwards only
    assert {(r["kernel"], r["variant"]) for r in generic} == {("scan_fwd_kernel", "rows"), ("scan_bwd_kernel", "rows")}
    # KernelConfig(one_launch=False): a forward launch per direction, each walk order compiled in
    per_direction = [r for r in report["rows"]
                     if r["case"] == "ss2d_per_direction" and r["kernel"] == "scan_fwd_kernel"]
    assert sorted(r["variant"] for r in per_direction) == ["cols", "cols reversed", "rows", "rows reversed"]
    assert all(tuple(r["grid"]) == (3, 1, 2) for r in per_direction)
    assert all(r["spill_bytes"] == 0 for r in report["rows"])


@needs_toolchain
def test_register_cap_trades_spills_for_programs_per_sm(tmp_path):
    """KernelConfig(bwd_max_registers=128): the backward fits 8 programs on an SM instead of 4 and
    spills to local memory (the forward keeps the compiler's choice)."""
    report, table = run_kernels(tmp_path, "--arch", "sm_90", "--cases", "ss2d", "--batch", "2",
                                "--config", "bwd_max_registers=128")
    assert report["config"] == {"bwd_max_registers": 128}
    bwd = [r for r in report["rows"] if r["kernel"] == "scan_bwd_kernel"]
    fwd = [r for r in report["rows"] if r["kernel"] == "scan_fwd_kernel"]
    assert len(bwd) == 4 and fwd
    for r in bwd:
        assert r["registers"] <= 128 and r["programs_per_sm"] == 8, r
        assert r["spill_bytes"] > 0 and r["loop"]["local"] > 0, r  # what the cap costs, in the loop too
    assert all(r["registers"] > 128 and r["loop"]["local"] == 0 for r in fwd)
    assert "/local" in table


def test_cli_rejects_unknown_architecture_and_case(tmp_path, monkeypatch):
    """Bad values stop the command before anything compiles, with a message naming the value and the
    rule: once through a real ``python -m vmunet_monai`` process, the rest through the same command
    in this process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "vmunet_monai", "kernels", "--arch", "sm_75"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "unknown GPU architecture 'sm_75'; known: sm_80" in proc.stderr, proc.stderr

    from vmunet_monai.cli import main

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the command refuses to run under it
    for args, message in ((["--cases", "ss2d,nope"], "unknown case(s) ['nope']"),
                          (["--config", "bwd_warps=4"], "KernelConfig has no field(s) ['bwd_warps']"),
                          (["--config", "block_d=48"], "KernelConfig.block_d=48 must be a power of two"),
                          (["--config", "bwd_max_registers=300"],
                           "KernelConfig.bwd_max_registers=300 must be between 24 and 255 registers")):
        with pytest.raises(SystemExit) as stop:
            main(["kernels", *args])
        assert message in str(stop.value), (args, str(stop.value))


def test_refuses_to_run_under_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="without TRITON_INTERPRET=1"):
        triton_aot.compile_report(90, ["ss2d"])


@pytest.mark.parametrize("text,value", [("sm_90", 90), ("90", 90), (90, 90), ("9.0", 90), ("SM80", 80),
                                        ("sm_100", 100), ("8.9", 89)])
def test_parse_arch(text, value):
    assert triton_aot.parse_arch(text) == value


@pytest.mark.parametrize("bad", ["sm_75", "hopper", "", "9"])
def test_parse_arch_rejects(bad):
    with pytest.raises(ValueError, match="unknown GPU architecture"):
        triton_aot.parse_arch(bad)


def test_residency_limits():
    # 209 registers -> 27 x 256 per warp -> 9 warps of the 65536-register file -> 4 two-warp programs
    assert triton_aot.residency(90, 209, 2, 1024) == (4, "registers")
    # 32 registers, one warp: 64 warps fit, but an SM holds at most 32 programs (sm_90), 16 on sm_86
    assert triton_aot.residency(90, 32, 1, 0) == (32, "blocks")
    assert triton_aot.residency(86, 32, 1, 0) == (16, "blocks")
    # 100 KiB of shared memory per program: two fit in 228 KiB, one in the 100 KiB of sm_89
    assert triton_aot.residency(90, 32, 4, 100 * 1024) == (2, "shared memory")
    assert triton_aot.residency(89, 32, 4, 90 * 1024) == (1, "shared memory")
    # 8 warps per program on sm_86 (48 warps): 6 by warps; 64 registers would allow 4
    assert triton_aot.residency(86, 64, 8, 0) == (4, "registers")
    assert triton_aot.residency(86, 32, 8, 0) == (6, "warps")


def test_format_report_lists_each_distinct_kernel_once():
    row = dict(case="ss2d", kernel="scan_fwd_kernel", variant="all four", dtype="float32", grid=(3, 4, 32),
               programs=384, num_warps=2, registers=219, spill_bytes=0, shared_bytes=1024, programs_per_sm=4,
               limited_by="registers", sm_fill=0.727)
    rows = [triton_aot.KernelRow(**row), triton_aot.KernelRow(**row),
            triton_aot.KernelRow(**{**row, "case": "ss2d_bf16", "dtype": "bfloat16"})]
    text = triton_aot.format_report(rows, "sm_90").splitlines()
    assert text[0].startswith("triton kernels compiled for sm_90 (H100 SXM, 132 SMs)")
    assert len(text) == 4 and "0.73" in text[2] and "bfloat16" in text[3]


def test_missing_triton_is_named(monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(util, "find_spec", lambda name, *a, **k: None if name == "triton" else real(name, *a, **k))
    from vmunet_monai.install import extra_install

    with pytest.raises(RuntimeError, match=re.escape(f"needs triton: {extra_install('triton')}")):
        triton_aot.compile_report("sm_90", ["ss2d"])


def test_parse_config():
    assert triton_aot.parse_config("bwd_num_warps=4, keep_states=false") == {"bwd_num_warps": 4, "keep_states": False}
    assert triton_aot.parse_config("") == {} and triton_aot.parse_config({"segments": 2}) == {"segments": 2}
    for bad in ("bwd_num_warps", "bwd_num_warps=four", "=4", "segments=-1"):
        with pytest.raises(ValueError, match="must be FIELD=INTEGER or FIELD=true/false"):
            triton_aot.parse_config(bad)
