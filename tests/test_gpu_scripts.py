"""The GPU measurement scripts, checked on the CPU: a script error found only on a lent GPU costs its time."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="needs the triton package (its interpreter runs the kernels on the CPU)")
def test_bench_ss2d_gpu_dry_run_takes_every_step(tmp_path):
    """``scripts/bench_ss2d_gpu.py --dry-run`` runs every step of the default measurement (all but the tile
    sweep) through Triton's interpreter at a tiny shape; the agreements it records are real ones."""
    out = tmp_path / "scan.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_ss2d_gpu.py"), "--dry-run",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert "errors" not in res, res["errors"]  # every part ran
    assert res["shape"] == [1, 8, 3, 3, 4] and "Triton interpreter" in res["device"]
    assert res["fwd_rel_err_vs_torch"] < 1e-5
    assert set(res["grad_rel_err_vs_torch"]) == {"u", "delta", "A", "B", "C", "D", "delta_bias"}
    assert max(res["grad_rel_err_vs_torch"].values()) < 1e-5
    # the step-loop backward for a channel width and deterministic, on both layouts, against the chunks (the GPU
    # run also times 8 and 32 channels: the same code with another tile)
    assert [(r["layout"], r["block_d"], r["deterministic"]) for r in res["bwd_steps"]] == [
        (layout, bd, det) for layout in ("row_major", "channels_last") for bd, det in ((16, False), (32, True))]
    assert max(r["max_grad_rel_err_vs_chunked"] for r in res["bwd_steps"]) < 1e-5
    det = res["fused_fwd_bwd_float32_deterministic"]
    assert det["bit_identical_repeat"] is True and det["default_bit_identical_repeat"] is True
    assert [(r["batch"], r["segments"], r["one_launch"]) for r in res["segments_sweep"]] == [
        (1, 1, False), (1, 4, True), (1, 0, True)]  # (the GPU run: 1, 4, 8, 16, 32 and auto)
    for key in ("fused_fwd_bfloat16", "fused_fwd_bwd_bfloat16", "fused_fwd_channels_last_float32",
                "fused_fwd_unroll1_float32", "fused_low-rank_fwd_bwd_ms", "fused_fwd_bwd_float32_keep_states_False",
                "composed_torch_fwd_float32_ms"):
        assert key in res, key
    assert "Triton interpreter" in proc.stdout and "step-loop backward, 32 channels" in proc.stdout


def test_bench_ss2d_gpu_refuses_quick_with_sweep():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_ss2d_gpu.py"), "--quick", "--sweep"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "--quick and --sweep exclude each other" in proc.stderr


def test_gpu_report_names_its_steps_and_needs_a_gpu(tmp_path):
    """``scripts/gpu_report.sh``: the quick steps are wired to the scripts' options, and without a CUDA
    device it stops at once with the reason instead of logging failures."""
    text = open(os.path.join(ROOT, "scripts", "gpu_report.sh")).read()
    assert "step scan_quick \"$PYTHON\" scripts/bench_ss2d_gpu.py --quick" in text
    from vmunet_monai.benchmark import parse_variants

    spec, = re.findall(r'--variants "([^"]*)"', text)
    variants = parse_variants(spec)
    assert [v.label for v in variants] == ["segments", "fast", "fast_steps"]
    assert variants[2].kernels == {"bwd_stepwise": True, "segments": 0} and all(variants[2].ss2d.values())
    import torch

    if not torch.cuda.is_available():  # (on a GPU machine the script would start measuring)
        proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_report.sh"), str(tmp_path / "out")],
                              cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 1 and "sees no CUDA device" in proc.stderr


def test_bench_ss2d_gpu_goes_on_past_a_part_that_fails(capsys):
    """One part of the GPU scan measurement that fails (an option that does not compile on that GPU, memory)
    is recorded with its error and the script goes on to the next part."""
    spec = importlib.util.spec_from_file_location("_bench_ss2d_gpu", os.path.join(ROOT, "scripts", "bench_ss2d_gpu.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.DEVICE = "cpu"
    res, ran = {}, []

    def broken():
        raise RuntimeError("PassManager::run failed\nlong compiler log")

    script.section("options", res, broken)
    script.section("composed", res, lambda: ran.append("composed"))
    assert res == {"errors": {"options": "RuntimeError: PassManager::run failed"}} and ran == ["composed"]
    assert "options: failed, RuntimeError: PassManager::run failed; going on" in capsys.readouterr().out


def test_bench_synapse_inference_times_the_label_map_both_ways():
    """``scripts/bench_synapse_inference.py --label_map_only``: MONAI's argmax and ChannelArgmaxd on the same
    scores, both timed in one run, with their agreement."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_synapse_inference.py"), "--label_map_only",
                           "--device", "cpu", "--shape", "40,36,6"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["volume"] == [40, 36, 6] and result["label_map"]["identical"] is True
    assert result["label_map"]["AsDiscreted_s"] > 0 and result["label_map"]["ChannelArgmaxd_s"] > 0
