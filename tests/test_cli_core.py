"""The package without mamba-ssm (absent or broken), and the doctor / benchmark commands."""

import importlib.util
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from bundle_helpers import BUNDLES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code, tmp_path, extra_path=None, env_extra=None):
    env = dict(os.environ)
    paths = [ROOT] + ([str(extra_path)] if extra_path else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


NETWORKS_RUN = """
    import sys, torch
    import vmunet_monai
    from vmunet_monai.networks import VMUNet, VMUNetV2, MambaUNet
    tiny = dict(dims=(8, 16, 32, 64), d_state=4, depths=(1, 1, 1, 1))
    for net in (VMUNet(depths_decoder=(1, 1, 1, 1), **tiny), VMUNetV2(mid_channels=8, **tiny), MambaUNet(**tiny)):
        net.eval()
        assert net(torch.randn(1, 3, 32, 32)).shape[-2:] == (32, 32)
    print("mamba_ssm imported:", "mamba_ssm.ops.selective_scan_interface" in sys.modules)
    from vmunet_monai.doctor import report
    print(report())
"""


def test_runs_without_mamba_ssm(tmp_path):
    import importlib.util

    if importlib.util.find_spec("mamba_ssm") is not None:
        pytest.skip("mamba-ssm is installed in this environment; the broken-install test covers the other case")
    res = run_py(NETWORKS_RUN, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "mamba_ssm imported: False" in res.stdout
    assert "mamba-ssm is not installed" in res.stdout and "mamba-ssm: not installed, and not needed" in res.stdout


def test_broken_mamba_ssm_install_is_explained_not_raised(tmp_path):
    """mamba-ssm 2.3.x without its compiled extension: importing it fails; we must still run and say why."""
    fake = tmp_path / "site"
    pkg = fake / "mamba_ssm" / "ops"
    pkg.mkdir(parents=True)
    (fake / "mamba_ssm" / "__init__.py").write_text("from mamba_ssm.ops import selective_scan_interface\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "selective_scan_interface.py").write_text("import selective_scan_cuda\n")
    res = run_py(NETWORKS_RUN, tmp_path, extra_path=fake)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "mamba_ssm  unavailable" in out
    # on a machine without CUDA the reason is the missing device; with CUDA it is the missing extension
    assert ("no CUDA device is visible" in out) or ("compiled extension does not load" in out)
    assert "fix:" in out


def test_cli_help_and_doctor(tmp_path, capsys):
    env = dict(os.environ, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-m", "vmunet_monai", "doctor"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr
    for word in ("selective-scan backends", "reference", "torch", "triton", "mamba_ssm", "CPU tensors use",
                 "torch.compile: the scans enter a compiled graph", "triton kernels: "):
        assert word in res.stdout
    if importlib.util.find_spec("triton") is not None:
        assert "python -m vmunet_monai kernels --arch sm_90" in res.stdout or "cannot be compiled" in res.stdout
    # the choice deterministic mode would make here: a deterministic CPU backend
    det = next(line for line in res.stdout.splitlines() if line.startswith("in deterministic mode (--determinism true)"))
    assert "CPU tensors use cpu, on one thread" in det or "CPU tensors use torch" in det, det
    assert "not deterministic" not in det, det
    # the optional extras, each with its packages' versions as installed here
    tracking = next(line for line in res.stdout.splitlines() if line.strip().startswith("tracking "))
    mlflow = importlib.util.find_spec("mlflow") is not None
    assert ("mlflow not installed" not in tracking) == mlflow and "--tracking mlflow" in tracking, tracking
    # how to install one: from this checkout (the package is installed from one, not from the package index)
    from vmunet_monai import install

    repo = Path(install.__file__).resolve().parents[1]
    assert f"optional extras (pip install -e '{repo}[EXTRA]'):" in res.stdout and "onnxruntime" in res.stdout
    assert install.extra_install("export") == f"pip install -e '{repo}[export]'" and (repo / "setup.cfg").is_file()
    original = install.checkout
    try:
        install.checkout = lambda: None  # an install from a wheel
        assert install.extra_install("export") == "pip install 'vmunet-monai[export]'"
    finally:
        install.checkout = original
    from vmunet_monai.cli import main

    with pytest.raises(SystemExit) as exc:  # fire ends a help page with exit status 0 (on stderr, off a terminal)
        main(["benchmark", "--help"])
    assert exc.value.code == 0 and "--reference" in "".join(capsys.readouterr())


def test_bad_backend_env_is_reported_by_doctor(monkeypatch):
    from vmunet_monai.doctor import report

    monkeypatch.setenv("VMUNET_SCAN_BACKEND", "warp")  # read at every choice, not at import
    text = report()
    assert "backend selection fails" in text and "'warp' is not a scan backend" in text


def test_benchmark_scan_only_runs_and_reports_ratios(tmp_path):
    from vmunet_monai.benchmark import time_scan

    t_torch = time_scan("torch", "cpu", repeats=1, dim=16, length=64)
    t_ref = time_scan("reference", "cpu", repeats=1, dim=16, length=64)
    assert t_torch > 0 and t_ref > 0


def test_benchmark_times_monai_baselines_beside_ours(capsys):
    """``benchmark --baselines unet,swin_unetr``: MONAI's CNN and transformer U-Nets on the same input,
    with parameter counts; an unknown name is refused with the choices."""
    from vmunet_monai.benchmark import BASELINES, _baseline_missing, run_benchmark

    for name, build in BASELINES.items():
        assert _baseline_missing(name) is None, _baseline_missing(name)  # the test extra installs them
        net = build().eval()
        with torch.no_grad():
            assert net(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(SystemExit, match="unknown baseline 'nnunet'; choose from unet, swin_unetr"):
        run_benchmark(networks="vmunet", size=32, backends="torch", baselines="nnunet", scan_only=False, repeats=1)


def test_benchmark_names_a_missing_baseline_package(monkeypatch):
    from vmunet_monai import benchmark

    monkeypatch.setitem(benchmark.BASELINE_NEEDS, "unet", "no_such_package_xyz")
    assert benchmark._baseline_missing("unet") == "MONAI's unet needs no_such_package_xyz (pip install no_such_package_xyz)"


def test_benchmark_kernel_config_holds_for_the_run_only(monkeypatch):
    """``benchmark --kernel_config "bwd_stepwise=true,..."``: the triton kernels' configuration during
    the run (recorded with the results), the previous one afterwards; bad fields are refused by name."""
    from vmunet_monai import benchmark
    from vmunet_monai.ops import triton_scan

    seen = []
    monkeypatch.setattr(benchmark, "_run_benchmark", lambda *a: seen.append((triton_scan.kernel_config(), a[-2])))
    before = triton_scan.kernel_config()
    benchmark.run_benchmark(kernel_config="bwd_stepwise=true,bwd_step_block_d=16")
    (cfg, label), = seen
    assert cfg.bwd_stepwise and cfg.bwd_step_block_d == 16 and cfg.bwd_tile() == (16, 1) and label == repr(cfg)
    assert triton_scan.kernel_config() is before and not before.bwd_stepwise
    benchmark.run_benchmark()
    assert seen[1] == (before, None)
    for text, message in (("bwd_steps=true", r"KernelConfig has no field\(s\) \['bwd_steps'\]"),
                          ("bwd_step_block_d=24", "KernelConfig.bwd_step_block_d=24 must be a power of two"),
                          ("bwd_stepwise", "must be FIELD=INTEGER or FIELD=true/false")):
        with pytest.raises(SystemExit, match=message):
            benchmark.run_benchmark(kernel_config=text)
    assert triton_scan.kernel_config() is before


@pytest.fixture
def small_benchmark(monkeypatch):
    """run_benchmark on a VM-UNet of the smallest widths and a stage-1 scan of 16 channels by 64 steps: what the
    tests check is which rows are timed with which options in force, not the times (the full sizes take a minute
    on two CPU cores)."""
    import functools

    from vmunet_monai import benchmark
    from vmunet_monai.networks import VMUNet

    monkeypatch.setattr(benchmark, "_stage1_inputs", functools.partial(benchmark._stage1_inputs, dim=16, length=64))
    monkeypatch.setattr(benchmark, "_build", lambda name, backend, device, out_channels=1: VMUNet(
        out_channels=out_channels, scan_backend=backend, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
        depths_decoder=(1, 1, 1, 1), d_state=4).to(device))


def test_benchmark_variants_time_more_configurations_in_the_same_run(capsys, small_benchmark):
    """``benchmark --variants "..."``: each variant's rows come beside the plain ones, with its SS2D options
    and kernel fields in force while they are timed and the run's own afterwards; a variant that changes
    nothing on a backend (kernel fields off triton), or what an earlier one did, is left out there; bad
    variants are refused by name."""
    from vmunet_monai import benchmark
    from vmunet_monai.layers import SS2D
    from vmunet_monai.ops import triton_scan

    before = triton_scan.kernel_config()
    fast, steps, opts = benchmark.parse_variants("fast; steps:fast,bwd_stepwise=true,segments=0;"
                                                 "fused_dt_proj=true,unroll=1")
    assert (fast.label, fast.ss2d, fast.kernels) == ("fast", dict.fromkeys(benchmark.SS2D_OPTIONS, True), {})
    assert steps.label == "steps" and steps.kernels == {"bwd_stepwise": True, "segments": 0}
    assert opts.label == "fused_dt_proj=true,unroll=1" and opts.ss2d == {"fused_dt_proj": True}
    kernels_only, = benchmark.parse_variants("bwd_stepwise=true")
    plain = dict.fromkeys(benchmark.SS2D_OPTIONS, False)
    assert kernels_only.effect("triton", plain) != kernels_only.effect("torch", plain) == \
        benchmark.Variant("", {}, {}).effect("torch", plain)
    assert steps.effect("torch", plain) == fast.effect("torch", plain) != steps.effect("triton", plain)

    seen = []
    timed = benchmark._timed_row

    def spy(model, label, *args):
        ss2d = next(m for m in model.modules() if isinstance(m, SS2D))
        seen.append((label, ss2d.fused_dt_proj, SS2D.fused_norm_gate, triton_scan.kernel_config().unroll))
        return timed(model, label, *args)

    benchmark._timed_row = spy
    try:
        res = benchmark.run_benchmark(networks="vmunet", size=32, backends="torch", repeats=1, scan_only=False,
                                      variants="lowrank:fused_dt_proj=true,unroll=1;bwd_stepwise=true;"
                                               "again:fused_dt_proj=true")
    finally:
        benchmark._timed_row = timed
    assert seen == [("torch[lowrank]", True, False, 1)]
    assert [r["backend"] for r in res["networks"]] == ["torch", "torch[lowrank]"]
    assert res["networks"][1]["variant"] == "lowrank" and res["networks"][1]["latency_b1_s"] > 0
    assert res["variants"] == {"lowrank": {"fused_dt_proj": True, "unroll": 1},
                               "bwd_stepwise=true": {"bwd_stepwise": True}, "again": {"fused_dt_proj": True}}
    assert "torch[lowrank]" in capsys.readouterr().out
    assert not SS2D.fused_dt_proj and triton_scan.kernel_config() is before
    for text, message in (("fast,bwd_steps=true", r"variant 'fast,bwd_steps=true': KernelConfig has no field"),
                          ("quick", "'quick' is neither NAME=VALUE nor a preset"),
                          ("a:unroll=1;a:unroll=2", "label 'a' is used twice"),
                          ("empty:", "variant 'empty:' sets nothing")):
        with pytest.raises(SystemExit, match=message):
            benchmark.run_benchmark(variants=text)
    assert triton_scan.kernel_config() is before


def test_every_command_line_option_is_described_whole():
    """``--help`` of every command describes each of its parameters, and no description is cut short (fire's
    docstring parser ends one at a line it takes for a new argument)."""
    import inspect

    from fire import docstrings

    from vmunet_monai.cli import Commands

    for name, fn in inspect.getmembers(Commands, inspect.isfunction):
        if name.startswith("_"):
            continue
        described = {a.name: a.description for a in docstrings.parse(fn.__doc__ or "").args or []}
        for param in list(inspect.signature(fn).parameters.values())[1:]:
            if param.kind is param.VAR_KEYWORD:
                continue
            text = (described.get(param.name) or "").strip()
            assert text, f"{name} --{param.name} has no description"
            assert text.endswith((".", ")")), f"{name} --{param.name}: description cut short: ...{text[-60:]!r}"


def test_no_option_takes_the_help_flag():
    """fire gives an option whose first letter no other option shares a one-letter flag; ``-h`` is help's, so an
    option starting with h would be listed as ``-h`` in ``--help`` while ``-h`` still shows help."""
    import inspect

    from vmunet_monai.cli import Commands

    for name, fn in inspect.getmembers(Commands, inspect.isfunction):
        params = [p for p in list(inspect.signature(fn).parameters)[1:]]
        assert not [p for p in params if p.startswith("h")], f"{name}: {params}"


def test_prepare_and_demo_data_help_lists_each_bundles_options():
    """The options that ``prepare --help`` and ``demo_data --help`` list per bundle are exactly those its
    importer and generator take."""
    import re

    from vmunet_monai.cli import Commands
    from vmunet_monai.data import DATASET_MODULES, options_of

    for command, common in (("prepare", set()), ("demo_data", {"num", "seed"})):
        doc = getattr(Commands, command).__doc__
        listed = dict(re.findall(r"^ *- (\w+): (.*(?:\n {10,}\S.*)*)", doc, flags=re.M))
        for bundle in DATASET_MODULES:
            named = set(re.findall(r"--(\w+)", listed.get(bundle, "")))
            assert named == set(options_of(bundle, command)) - common, (command, bundle, named)


def test_prepare_and_demo_data_refuse_bad_options_in_one_line(tmp_path, capsys):
    """An option the bundle does not have, or a value its importer refuses, ends the command with one line on
    stderr naming the command, the bundle, the option or value and the rule, and exit status 1."""
    from vmunet_monai.cli import main

    raw = tmp_path / "raw"
    for argv, message in (
        (["demo_data", "polyp_seg", str(raw), "--num", "1"],
         "error: demo_data polyp_seg: num must be at least 2, got 1"),
        (["demo_data", "isic_skin_lesion", str(raw), "--year", "2015"],
         "error: demo_data isic_skin_lesion: year must be 2016, 2017 or 2018, got 2015"),
        (["demo_data", "polyp_seg", str(raw), "--year", "2017"],
         "error: demo_data polyp_seg: unknown option --year (options of polyp_seg: --num, --seed, --layout)"),
        (["prepare", "polyp_seg", str(raw), str(tmp_path / "out"), "--split", "paper"],
         "error: prepare polyp_seg: unknown option --split (options of polyp_seg: --val_fraction, --seed, --verify, --layout, --test_fraction, --mask_suffix, --classes, --mask_values, --foreground)"),
        (["prepare", "polyp_seg", str(raw), str(tmp_path / "out"), "--clases", "a,b"],
         "error: prepare polyp_seg: unknown option --clases; did you mean --classes? (options of polyp_seg: --val_fraction, --seed, --verify, --layout, --test_fraction, --mask_suffix, --classes, --mask_values, --foreground)"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err == message
    assert not raw.exists()  # nothing was written for a refused command
    main(["demo_data", "polyp_seg", str(raw), "--num", "2", "--seed", "1"])
    with pytest.raises(SystemExit):
        main(["prepare", "polyp_seg", str(raw), str(tmp_path / "out"), "--val_fraction", "2"])
    assert "error: prepare polyp_seg --val_fraction 2: a share of the cases, at least 0 and below 1" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before the import


@pytest.mark.parametrize("argv,message", [
    (["demo", "--epochs", "0"], "error: demo --epochs 0: must be an integer of at least 1"),
    (["demo", "--size", "8"], "error: demo --size 8: must be an integer of at least 32"),
    (["demo", "--baseline", "resnet"], "error: demo --baseline 'resnet': choose from unet, swin_unetr (or leave it out)"),
    (["demo", "--baseline", "swin_unetr", "--size", "48"],
     "error: demo --size 48: SwinUNETR needs a multiple of 32 (it halves the map five times)"),
    (["compare"], "error: compare: give at least one evaluation folder or per-case CSV (several to compare models)"),
    (["export", "isic_skin_lesion", "--format", "xyz"], "error: --format 'xyz': choose one of torchscript, onnx, pt2"),
    (["benchmark", "--backends", "foo", "--scan_only", "true"],
     "error: unknown scan backend 'foo'; choose from cpu, mamba_ssm, reference, torch, triton or auto"),
    (["benchmark", "--networks", "foo"], "error: unknown network 'foo'; choose from vmunet, vmunet_v2, mamba_unet"),
    (["prepare", "nob", "raw", "out"], "error: unknown bundle 'nob': choose one of isic_skin_lesion, polyp_seg, "
                                       "synapse_multiorgan"),
    (["benchmark", "--repeats", "0"], "error: benchmark --repeats 0: must be an integer of at least 1"),
    (["benchmark", "--size", "0"], "error: benchmark --size 0: must be an integer of at least 32"),
    (["benchmark", "--batch", "0"], "error: benchmark --batch 0: must be an integer of at least 1"),
    (["benchmark", "--device", "tpu"], "error: --device 'tpu': not a device; choose cpu, cuda or cuda:N"),
    (["kernels", "--sms", "0"], "error: sms=0 must be at least 1 (or left out: the card's own)"),
    (["kernels", "--out", "."], "error: --out .: a folder; give the JSON file's path"),
    (["kernels", "--out", "no/such/k.json"],
     "error: --out no/such/k.json: no folder {tmp}/no/such to write it into"),
    (["export", "isic_skin_lesion", "--tolerance", "-1"], "error: --tolerance -1: must be a number of at least 0"),
    (["predict", "isic_skin_lesion", "in", "out", "--device", "foo"],
     "error: --device 'foo': not a device; choose cpu, cuda or cuda:N"),
    (["predict", "isic_skin_lesion", "in", "out", "--baseline", "resnet"],
     f"error: --baseline 'resnet': {BUNDLES / 'isic_skin_lesion' / 'configs' / 'baseline_resnet.json'} does not exist; "
     "this bundle has swin_unetr, unet"),
    (["predict", "synapse_multiorgan", "in", "out", "--baseline", "resnet"],
     f"error: --baseline 'resnet': {BUNDLES / 'synapse_multiorgan' / 'configs' / 'baseline_resnet.json'} does not "
     "exist; this bundle has swin_unetr, unet"),
    (["predict", "synapse_multiorgan", "in", "out", "--device", "tpu"],
     "error: --device 'tpu': not a device; choose cpu, cuda or cuda:N"),
])
def test_bad_arguments_end_in_one_error_line(argv, message, capsys, tmp_path, monkeypatch):
    """A value a command cannot take ends it with one line on stderr that starts with ``error:`` and names the
    option, the value and the choices (no traceback), and a non-zero exit status; nothing is written."""
    from vmunet_monai.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    code = exc.value.code
    said = code if isinstance(code, str) else capsys.readouterr().err.strip()
    assert code not in (0, None) and said == message.replace("{tmp}", str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_kernels_refuses_a_file_where_its_dump_folder_goes_before_compiling(tmp_path, capsys):
    from vmunet_monai.cli import main

    (tmp_path / "ir").write_text("")
    with pytest.raises(SystemExit) as exc:
        main(["kernels", "--dump", str(tmp_path / "ir")])
    assert exc.value.code == (f"error: --dump {tmp_path / 'ir'}: a file stands there; the kernels' code goes into a "
                              "folder")


def test_benchmark_of_backends_none_of_which_runs_here_is_an_error(tmp_path, monkeypatch, capsys):
    """--backends naming only backends this machine lacks stops before any timing (it timed the reference scan,
    printed an empty table and exited 0); one of several missing is skipped with its reason."""
    from vmunet_monai import benchmark
    from vmunet_monai.ops.dispatch import backend_status

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        benchmark.run_benchmark(device="cpu", backends="mamba_ssm", scan_only=True, repeats=1)
    assert str(exc.value.code) == (f"error: benchmark --backends mamba_ssm: none of them runs on cpu (mamba_ssm: "
                                   f"{backend_status('mamba_ssm').detail})")
    timed = []
    monkeypatch.setattr(benchmark, "time_scan", lambda b, *a, **k: timed.append(b) or 0.002)
    monkeypatch.setattr(benchmark, "_median_time", lambda *a, **k: 0.004)
    res = benchmark.run_benchmark(device="cpu", backends="mamba_ssm,torch", scan_only=True, repeats=1)
    assert timed == ["torch", "reference"] and set(res["scan"]) == {"torch", "reference",
                                                                    "mamba_ssm_reference_algorithm"}
    printed = capsys.readouterr().out
    assert "skipping backend mamba_ssm: " in printed and "(median of the runs)" in printed
    assert "2.0x slower than reference" in printed  # (a slower row read "0.5x faster")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_every_command(flag, capsys):
    """``python -m vmunet_monai --help`` lists the commands with their one-line summaries (fire alone would
    describe the command class instead)."""
    import inspect

    from vmunet_monai.cli import Commands, main

    main([flag])
    out = capsys.readouterr().out
    assert "COMMANDS" in out
    for name, fn in inspect.getmembers(Commands, inspect.isfunction):
        if not name.startswith("_"):
            assert f"     {name}\n" in out and fn.__doc__.split("\n")[0].strip()[:40] in out, name


def test_wheel_carries_the_files_the_package_reads(tmp_path):
    """A wheel built from the project holds the C kernel source, the model-zoo schema and the mamba-ssm build
    script, which the package reads from its own folder at run time."""
    import importlib.util
    import shutil
    import zipfile

    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("needs setuptools (the project's build backend) in this environment")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "vmunet_monai"), src / "vmunet_monai",
                    ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(src), "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("vmunet_monai-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("vmunet_monai/ops/csrc/selective_scan_cpu.c", "vmunet_monai/resources/bundle_metadata_schema.json",
                 "vmunet_monai/resources/build_mamba_ssm.sh", "vmunet_monai/ops/triton_kernels/scan.py"):
        assert path in names, path


def test_mamba_ssm_build_hint_names_the_shipped_script_which_explains_a_missing_nvcc(tmp_path):
    """``doctor`` and the backend's error name the build script by its absolute path inside the package
    (a pip-installed copy has no scripts/ folder) and this interpreter; ``scripts/build_mamba_ssm.sh`` runs
    the same file; without nvcc the script stops at once with one line saying so."""
    import shlex
    import shutil

    from vmunet_monai.ops.mamba_ssm_backend import BUILD_HINT, build_command

    cmd = build_command()
    assert cmd in BUILD_HINT and shlex.split(cmd)[0] == f"PYTHON={sys.executable}"
    script = shlex.split(cmd)[-1]
    assert os.path.isfile(script) and script.endswith(os.path.join("vmunet_monai", "resources", "build_mamba_ssm.sh"))
    wrapper = open(os.path.join(ROOT, "scripts", "build_mamba_ssm.sh")).read()
    assert 'exec "$BASH" "$here/../vmunet_monai/resources/build_mamba_ssm.sh" "$@"' in wrapper
    bin_dir = tmp_path / "bin"  # the tools the script needs before its nvcc check, and no nvcc
    bin_dir.mkdir()
    for tool in ("mktemp", "rm"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    for path in (script, os.path.join(ROOT, "scripts", "build_mamba_ssm.sh")):
        proc = subprocess.run([shutil.which("bash"), path], capture_output=True, text=True, timeout=60,
                              env={"PATH": str(bin_dir), "HOME": str(tmp_path)})
        assert proc.returncode == 1 and proc.stderr.strip() == \
            "error: nvcc not found; install the CUDA toolkit matching torch's CUDA", proc.stderr


def test_a_device_this_machine_lacks_is_named_before_any_work(monkeypatch):
    """``predict --device``: a CUDA device on a machine without one, or an index past its devices, is refused
    with what the machine has, before the bundle is read or anything written."""
    from vmunet_monai.validation import InputError, check_device

    assert check_device(None) is None and check_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"--device 'cuda': no CUDA device is visible here \(torch .*\); use --device "
                                         r"cpu or leave it out"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == "cuda:1" and check_device("cuda") == "cuda"
    with pytest.raises(InputError, match=r"--device 'cuda:2': this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        check_device("cuda:2")


def test_benchmark_goes_on_past_a_variant_that_fails(capsys, monkeypatch, small_benchmark):
    """A variant that fails (an option that does not compile or run on this machine, memory) is recorded with its
    error and printed; the rows after it are still timed in the same run."""
    from vmunet_monai import benchmark

    timed = benchmark._timed_row

    def flaky(model, label, *args):
        if label == "torch[broken]":
            raise RuntimeError("no kernel image is available for execution on the device\nsecond line")
        return timed(model, label, *args)

    monkeypatch.setattr(benchmark, "_timed_row", flaky)
    res = benchmark.run_benchmark(networks="vmunet", size=32, backends="torch", repeats=1,
                                  variants="broken:fused_dt_proj=true;fine:fused_norm_gate=true")
    rows = {r["backend"]: r for r in res["networks"]}
    assert rows["torch[broken]"]["error"] == "RuntimeError: no kernel image is available for execution on the device"
    assert rows["torch[fine]"]["latency_b1_s"] > 0 and list(rows) == ["torch", "torch[broken]", "torch[fine]"]
    out = capsys.readouterr().out
    assert "torch[broken]: failed, RuntimeError: no kernel image" in out and "torch[fine]" in out


def test_benchmark_checks_the_reference_checkout_before_timing(tmp_path, monkeypatch):
    """``benchmark --reference PATH`` that is no checkout of the official VM-UNet stops before anything is timed."""
    from vmunet_monai import benchmark

    monkeypatch.setattr(benchmark, "time_scan", lambda *a, **k: pytest.fail("timed before checking --reference"))
    with pytest.raises(SystemExit, match=r"error: benchmark --reference .*: not a checkout of the official VM-UNet "
                                         r"\(no models/vmunet/vmamba.py\)"):
        benchmark.run_benchmark(reference=str(tmp_path), scan_only=True)


def test_true_and_false_on_the_command_line_are_booleans():
    """fire reads only True/False as booleans; ``--tta no`` must not arrive as the (truthy) string "no"."""
    from vmunet_monai.cli import _check_arguments

    paths = ["'b'", "'i'", "'o'"]  # paths as Python string literals, which fire reads back verbatim
    assert _check_arguments(["predict", "b", "i", "o", "--tta", "no", "--probabilities=ON", "--resume"]) == \
        ["predict", *paths, "--tta=False", "--probabilities=True", "--resume=True"]
    assert _check_arguments(["predict", "false", "true"]) == ["predict", "'false'", "'true'"]  # text, not booleans
    assert _check_arguments(["package", "b", "o", "--noexport"]) == ["package", "'b'", "'o'", "--noexport"]
    assert _check_arguments(["predict", "b", "i", "o", "--batch-size", "4"]) == ["predict", *paths, "--batch_size=4"]
    # the options of prepare are each bundle's, checked and turned into booleans by vmunet_monai.data
    assert _check_arguments(["prepare", "a", "b", "--verify", "no"]) == ["prepare", "'a'", "'b'", "--verify=no"]
    from vmunet_monai.data import _check_options

    assert _check_options("isic_skin_lesion", "prepare", {"verify": "no", "seed": 3}) == {"verify": False, "seed": 3}
    # both read on and off with one rule
    from vmunet_monai.validation import read_flag

    for word, value in [("TRUE", True), ("Yes", True), ("on", True), ("1", True), (True, True),
                        ("false", False), ("NO", False), ("Off", False), ("0", False), (False, False)]:
        assert read_flag("--x", word) is value
        assert _check_arguments(["predict", "b", "i", "o", f"--tta={word}"])[-1] == f"--tta={value}"


def test_version(capsys):
    from vmunet_monai import __version__
    from vmunet_monai.cli import main

    main(["--version"])
    assert capsys.readouterr().out == f"vmunet_monai {__version__}\n"


@pytest.mark.parametrize("argv,message", [
    (["predict", "B", "IN", "OUT", "--checkpiont", "x.pt"],
     "predict --checkpiont: no such option; did you mean --checkpoint? (options of predict: --bundle, --input"),
    (["predict", "B", "IN", "OUT", "--tta", "maybe"], "predict --tta 'maybe': an on/off option takes true or false"),
    (["predict", "B", "--tta", "IN", "OUT"], "predict --tta 'IN': an on/off option takes true or false"),
    (["demo_data", "isic_skin_lesion", "OUT", "--num", "2.5"], "demo_data --num '2.5': must be a whole number"),
    (["export", "B", "--tolerance", "abc"], "export --tolerance 'abc': must be a number"),
    (["predict", "B", "IN", "OUT", "--batch_size", "2", "--batch-size=3"], "predict --batch_size: given twice"),
    (["prepare", "isic_skin_lesion", "RAW", "OUT", "--seed", "abc"],
     "prepare isic_skin_lesion --seed 'abc': must be a whole number"),
    (["prepare", "isic_skin_lesion", "RAW", "OUT", "--verify", "nah"],
     "prepare isic_skin_lesion --verify 'nah': an on/off option takes true or false"),
    (["prepare", "isic_skin_lesion", "RAW", "OUT", "--test_fraction", "1.5"],  # (it named no option)
     "prepare isic_skin_lesion --test_fraction 1.5: a share of the cases, at least 0 and below 1"),
    (["doctr"], "'doctr': no such command; did you mean doctor? (commands: doctor, benchmark, "),
    (["doctor", "--bogus"], "doctor --bogus: no such option (doctor takes no options)"),
])
def test_bad_options_are_refused_before_anything_runs(argv, message, tmp_path, monkeypatch, capsys):
    """fire reports an option a command does not have only after running the command (a whole predict with the
    default weights, for a misspelled --checkpoint): refused first, in one line, with nothing written."""
    from vmunet_monai.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: " + message) and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_file_system_refusals_and_ctrl_c_are_one_line(tmp_path, monkeypatch, capsys):
    from vmunet_monai.cli import Commands, main

    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "x"):
        with pytest.raises(SystemExit):
            main(["demo_data", "polyp_seg", str(out)])
        assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'afile'}: a file stands where a folder is "
                                                  "needed (to write ")

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Commands, "predict", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["predict", "B", "IN", "OUT"])
    assert stop.value.code == 130
    assert capsys.readouterr().err.strip() == ("interrupted: predict stopped before it finished; what it wrote is "
                                               "kept, and the same command with --resume keeps it and does the rest")


def test_monai_s_gpu_dicom_notice_is_not_printed_for_every_loader(tmp_path):
    """With pydicom installed, MONAI 1.6 says twice per ``LoadImage`` that its GPU DICOM decoder is unavailable; a
    bundle's log held it once per loader. Importing the package leaves it out, and only it."""
    if importlib.util.find_spec("pydicom") is None:
        pytest.skip("pydicom is not installed (the label extra), so MONAI builds no nvImageCodec DICOM reader")
    code = """
        import logging, warnings
        logging.basicConfig(level=logging.INFO)
        warnings.simplefilter("default")
        {}
        from monai.transforms import LoadImage
        LoadImage(image_only=True)
        logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").warning("another warning of that module")
    """
    plain = run_py(code.format("pass"), tmp_path)
    ours = run_py(code.format("import vmunet_monai"), tmp_path)
    assert plain.returncode == ours.returncode == 0, plain.stderr + ours.stderr
    assert "nvImageCodec is not available" in plain.stderr and "did not register" in plain.stderr
    assert "nvImageCodec" not in ours.stderr and "another warning of that module" in ours.stderr


def test_a_bundle_run_refuses_an_override_that_names_no_setting(tmp_path, caplog):
    """MONAI adds ``--num_epoch 1`` (for ``--epochs``) as a key nothing reads, echoes it, and trains the default 300
    epochs; the bundles' initialize refuses it first, naming the closest setting."""
    import json

    import monai
    from bundle_helpers import bundle_dir

    from vmunet_monai.engine import check_overrides
    from vmunet_monai.validation import InputError

    root = bundle_dir("isic_skin_lesion")
    entry = str(Path(monai.__file__).parent / "bundle" / "__main__.py")
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"my_setting": 1, "my_use": "@my_setting", "epochs": "$@my_setting * 2"}))
    argv = [entry, "run", "training", "--meta_file", f"{root}/configs/metadata.json", "--config_file",
            f"['{root}/configs/train.json', '{own}']", "--bundle_root", str(root), "--epochs", "1",
            "--network_def#in_channels=3", "--my_setting", "2"]
    check_overrides(root, argv)  # settings of the bundle's configs, of a config of one's own, nested ones
    with pytest.raises(InputError, match=r"--num_epoch: no setting of this bundle; did you mean --epochs\?"):
        check_overrides(root, argv + ["--num_epoch", "1"])
    check_overrides(root, ["pytest", "run", "--num_epoch", "1"])  # predict, MONAI Label, tests: settings in Python
    # an argument of the network the configs build, by name (MONAI's error came after the data was loaded)
    with pytest.raises(InputError, match=r"--network_def#dim: vmunet_monai.networks.VMUNet has no argument 'dim'; did "
                                         r"you mean --network_def#dims\? \(its arguments: in_channels, "):
        check_overrides(root, argv + ["--network_def#dim", "[8,16,32,64]"])
    check_overrides(root, argv + ["--network_def#dims", "[8,16,32,64]", "--network_def#_requires_", "x"])
    train = json.loads((root / "configs" / "train.json").read_text())
    assert train["initialize"][0] == "$vmunet_monai.engine.check_overrides(@bundle_root)"
    # a setting of another config than the run's: named with the config that reads it (inference.json's
    # --checkpoint on a training trained from random weights, without a word)
    with pytest.raises(InputError, match=r"--input_dir: no setting of this run's configs; inference.json reads it"):
        check_overrides(root, argv + ["--input_dir", "x"])
    # a setting the run's configs define but do not read: evaluate.json replaces the training's network, which
    # alone reads --pretrained_checkpoint (the evaluation scored models/model.pt, not the file given)
    evaluate = [entry, "run", "evaluating", "--config_file", f"['{root}/configs/train.json', "
                f"'{root}/configs/evaluate.json']", "--bundle_root", str(root)]
    check_overrides(root, evaluate + ["--checkpoint", "w.pt", "--tta", "true", "--experiment_name", "x"])
    for name, rule in (("pretrained_checkpoint", "an evaluation takes the weights to score as --checkpoint PATH"),
                       ("compile", "an evaluation runs the network eagerly")):
        with pytest.raises(InputError, match=rf"--{name}: a setting this run's configs define but never read .*{rule}"):
            check_overrides(root, evaluate + [f"--{name}", "x"])
    check_overrides(root, argv + ["--pretrained_checkpoint", "w.pt", "--compile", "true"])  # a training reads them
    check_overrides(root, argv + ["--resume", "true", "--batch_size", "4"])
    # read only by the trainer an evaluation never runs: said, not refused (one set of overrides may serve both)
    with caplog.at_level(logging.WARNING, logger="vmunet_monai.engine.utils"):
        check_overrides(root, evaluate + ["--resume", "true", "--batch_size", "4", "--val_batch_size", "2"])
    for name, rule in (("resume", "--resume goes on with a training that stopped"),
                       ("batch_size", "an evaluation batches --val_batch_size images")):
        assert f"--{name}: nothing that 'evaluating' runs reads it (only parts of the configs this run does not run " \
               f"refer to it), so it changes nothing; {rule}" in caplog.text
    assert "--val_batch_size" not in caplog.text.replace("batches --val_batch_size", "")
    with pytest.raises(InputError, match=r"--my_use: a setting this run's configs define but never read \(nothing "
                                         r"that 'training' runs refers to it\)"):
        check_overrides(root, argv + ["--my_use", "3"])  # only a reference from what the run runs counts
    check_overrides(root, argv + ["--my_use", "3", "--epochs", "$@my_use"])  # ... or from another override
    ct = bundle_dir("synapse_multiorgan")
    with pytest.raises(InputError, match=r"--input_dir: no setting of this bundle; it reads its volumes from "
                                         r"--dataset_dir"):  # (it said: did you mean --output_dir?)
        check_overrides(ct, [entry, "run", "inferring", "--config_file", f"{ct}/configs/inference.json",
                             "--input_dir", "scans"])
    with pytest.raises(InputError, match=r"--batch_size: no setting of this bundle; a training batch is "
                                         r"--volumes_per_batch volumes of --slices_per_volume slices each"):
        check_overrides(ct, [entry, "run", "training", "--config_file", f"{ct}/configs/train.json",
                             "--batch_size", "1"])  # (it said: did you mean --sw_batch_size?)


def test_a_bundle_run_refuses_an_off_switch_it_would_read_as_on():
    """MONAI's command line passes ``--tta false`` on as the text 'false', which the configs read as on: the run
    used test-time augmentation (``--transunet_rule false``, ``--determinism false`` and ``--resume false`` alike).
    Such a value is refused with the one to give, as is a count below 1 (MONAI's traceback came later)."""
    import monai
    from bundle_helpers import bundle_dir

    from vmunet_monai.engine import check_overrides
    from vmunet_monai.validation import InputError

    root = bundle_dir("polyp_seg")
    entry = str(Path(monai.__file__).parent / "bundle" / "__main__.py")
    infer = [entry, "run", "inferring", "--config_file", f"{root}/configs/inference.json", "--bundle_root", str(root)]
    for word in ("false", "no", "off", "FALSE", "none"):
        with pytest.raises(InputError, match=rf"--tta {word}: MONAI's command line passes '{word}' on as text, which "
                                             r"turns an on/off setting on; give --tta False \(capital F\)"):
            check_overrides(root, infer + ["--tta", word])
    with pytest.raises(InputError, match=r"--probabilities maybe: an on/off setting; give --probabilities True or "
                                         r"--probabilities False"):
        check_overrides(root, infer + ["--probabilities=maybe"])
    for word in ("True", "False", "true", "yes", "0", "1", "None"):  # what fire reads, and text meant as on
        check_overrides(root, infer + ["--tta", word, "--probabilities", word])
    check_overrides(root, infer + ["--tta", "--probabilities"])  # bare flags: fire reads them as True
    train = [entry, "run", "training", "--config_file", f"{root}/configs/train.json", "--bundle_root", str(root)]
    check_overrides(root, train + ["--compile", "inductor", "--epochs", "2", "--batch_size", "$@val_batch_size"])
    with pytest.raises(InputError, match=r"--determinism false: .*give --determinism False"):
        check_overrides(root, train + ["--determinism", "false"])
    for name, value, what in (("epochs", "0", "the epochs to train"), ("batch_size", "-2", "images per training "
                              "batch"), ("val_interval", "1.5", "epochs between validations")):
        with pytest.raises(InputError, match=rf"--{name} {value}: {what}, a whole number of at least 1"):
            check_overrides(root, train + [f"--{name}", value])
    for name, value, default in (("epochs", "abc", "300"), ("learning_rate", "fast", "0.001"),
                                 ("weight_decay", "[0.1]", "0.01")):  # a traceback from inside ignite or AdamW
        with pytest.raises(InputError, match=rf"--{re.escape(name)} {re.escape(value)}: a number \(the configs' "
                                             rf"default is {default}\)"):
            check_overrides(root, train + [f"--{name}", value])
    check_overrides(root, train + ["--learning_rate", "1e-4", "--weight_decay", "0", "--seed", "None",
                                   "--min_learning_rate", "$@learning_rate / 100"])
    typo = root.parent / root.name[:-2]  # bundles/polyp for bundles/polyp_seg
    with pytest.raises(InputError, match=rf"--bundle_root {typo}: no such folder; did you mean {root}\? \(the run "
                                         r"would write its models and logs into a new folder of that name\)"):
        check_overrides(typo, [entry, "run", "training", "--config_file", f"{root}/configs/train.json",
                               "--bundle_root", str(typo)])
    elsewhere = root.parent / "my_runs_of_it"  # an output root of one's own: the configs stay where they are
    check_overrides(elsewhere, [entry, "run", "training", "--config_file", f"{root}/configs/train.json",
                                "--bundle_root", str(elsewhere)])
    ct = bundle_dir("synapse_multiorgan")
    evaluate = [entry, "run", "evaluating", "--config_file", f"['{ct}/configs/train.json', "
                f"'{ct}/configs/evaluate.json']", "--bundle_root", str(ct)]
    check_overrides(ct, evaluate + ["--transunet_rule", "False", "--calibration", "0"])
    with pytest.raises(InputError, match=r"--transunet_rule false: .*give --transunet_rule False"):
        check_overrides(ct, evaluate + ["--transunet_rule", "false"])


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg", "synapse_multiorgan"])
def test_every_setting_of_a_config_is_read_by_its_run(bundle):
    """A setting no reference chain reaches from what its config runs is dead: an override of it is refused, and
    while nothing refused it, it changed nothing (synapse_multiorgan's train.json had a datalist nothing read)."""
    import json

    from bundle_helpers import bundle_dir
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    from vmunet_monai.engine.utils import _unread_settings

    configs = bundle_dir(bundle) / "configs"
    runs = {"train.json": ([], "training"), "evaluate.json": (["train.json"], "evaluating"),
            "inference.json": ([], "inferring"), "multi_gpu_train.json": (["train.json"], "run")}
    tracked = set(DEFAULT_MLFLOW_SETTINGS["configs"]) | {"imports", "training", "evaluating", "inferring"}
    for name, (under, entry) in runs.items():
        own = set(json.loads((configs / name).read_text())) - tracked
        files = [configs / f for f in under + [name]]
        assert own and _unread_settings(files, own, [entry, "initialize", "finalize"], referenced=False) == [], name


def test_paths_reach_the_commands_verbatim(tmp_path, monkeypatch):
    """fire would read a folder named 2024 as a number, a,b as a tuple and cut prep#1 at its '#': every path argument
    reaches the command as typed, with a leading ~ expanded as a shell would."""
    from vmunet_monai.cli import _check_arguments

    monkeypatch.setenv("HOME", str(tmp_path))
    import fire

    seen = {}

    class Fake:
        def prepare(self, bundle, raw, out, **options):
            seen.update(bundle=bundle, raw=raw, out=out, **options)

        def score(self, pred, dataset, out=None, split="test"):
            seen.update(pred=pred, dataset=dataset, out=out, split=split)

    argv = _check_arguments(["prepare", "isic_skin_lesion", "2024", "prep#1", "--seed", "3"])
    fire.Fire(Fake, command=argv)
    assert seen == {"bundle": "isic_skin_lesion", "raw": "2024", "out": "prep#1", "seed": 3}
    seen.clear()
    fire.Fire(Fake, command=_check_arguments(["score", "a,b", "[1,2]", "--out", "~/sc#2"]))
    assert seen == {"pred": "a,b", "dataset": "[1,2]", "out": str(tmp_path / "sc#2"), "split": "test"}
    seen.clear()  # compare's short options, as its help lists them (-o/--out, -l/--labels, -m/--metric)

    class Runs:
        def compare(self, *runs, labels="", metric="dice", out=None, seed=0):
            seen.update(runs=list(runs), labels=labels, metric=metric, out=out)

    fire.Fire(Runs, command=_check_arguments(["compare", "r1", "2024", "-o", "cmp", "-l", "a,b", "-m=iou"]))
    assert seen == {"runs": ["r1", "2024"], "labels": ("a", "b"), "metric": "iou", "out": "cmp"}  # (fire: a tuple)
    seen.clear()
    fire.Fire(Fake, command=_check_arguments(["score", "--split", "val", "a,b", "2024"]))
    assert seen == {"pred": "a,b", "dataset": "2024", "out": None, "split": "val"}


@pytest.mark.parametrize("bundle", ["isic_skin_lesion", "polyp_seg", "synapse_multiorgan"])
def test_an_evaluation_scores_the_weights_of_its_checkpoint_setting(bundle, tmp_path):
    """``--checkpoint PATH`` on evaluate.json is the file its weights loader reads, its held-out check judges and its
    tracking names (an evaluation given it scored models/model.pt); models/model.pt by default; an ensemble wins."""
    from bundle_helpers import bundle_dir
    from monai.bundle import ConfigParser

    root = bundle_dir(bundle)
    configs = [str(root / "configs" / f) for f in ("train.json", "evaluate.json")]

    def parsed(**overrides):
        parser = ConfigParser()
        parser.read_config(configs)
        parser.update({"bundle_root": str(tmp_path), **overrides})
        loader, held_out = (next(h for h in parser.get("validate#handlers") if h["_target_"].endswith(name))
                            for name in ("WeightsLoader", "HeldOutCheck"))
        at = {id(h): i for i, h in enumerate(parser.get("validate#handlers"))}
        return (parser.get_parsed_content(f"validate#handlers#{at[id(loader)]}#load_path"),
                parser.get_parsed_content(f"validate#handlers#{at[id(held_out)]}#weights"))

    assert parsed() == (f"{tmp_path}/models/model.pt", [f"{tmp_path}/models/model.pt"])
    assert parsed(checkpoint="/w/best.pth") == ("/w/best.pth", ["/w/best.pth"])
    members = [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    for member in members:
        Path(member).write_bytes(b"")  # listed members must exist
    assert parsed(checkpoint="/w/best.pth", ensemble_checkpoints=members) == (members[0], members)
