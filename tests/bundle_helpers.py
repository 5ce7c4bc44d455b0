"""Helpers for bundle tests: tiny network overrides, bundle copies, synthetic prepared data, subprocess runs.

Importable by any test (``from bundle_helpers import ...``; pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
PYTHON = sys.executable

# the smallest network of each family that still has all four stages
TINY_NETWORKS = {
    "vmunet_monai.networks.VMUNet": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "depths_decoder": [1, 1, 1, 1],
                                     "d_state": 4},
    "vmunet_monai.networks.VMUNetV2": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1], "d_state": 4,
                                       "mid_channels": 8},
}


def bundle_dir(name: str) -> Path:
    return BUNDLES / name


def config_path(bundle: str, name: str) -> str:
    return str(bundle_dir(bundle) / "configs" / name)


def tiny_overrides(bundle: str, size: int = 32, epochs: int = 1) -> dict:
    """Overrides (``id: value``) that shrink a 2D bundle to a seconds-long CPU run."""
    config = json.loads((bundle_dir(bundle) / "configs" / "train.json").read_text())
    target = config["network_def"]["_target_"]
    over = {f"network_def#{k}": v for k, v in TINY_NETWORKS[target].items()}
    over.update({"image_size": [size, size], "epochs": epochs, "batch_size": 4, "val_batch_size": 4,
                 "num_workers": 0, "cache_rate": 0.0, "device": "cpu"})
    return over


def cli_args(overrides: dict) -> list[str]:
    """``--id value`` arguments for ``python -m monai.bundle run`` (values as JSON, which fire parses)."""
    args = []
    for key, value in overrides.items():
        # fire reads True and False as booleans; JSON's false would arrive as the text 'false'
        args += [f"--{key}", value if isinstance(value, str) else str(value) if isinstance(value, bool) else
                 json.dumps(value)]
    return args


def copy_bundle(bundle: str, target: Path) -> Path:
    """A copy of the bundle folder, so runs write models/ and eval/ outside the repository."""
    dest = Path(target) / bundle
    shutil.copytree(bundle_dir(bundle), dest, ignore=shutil.ignore_patterns("models", "eval", "runs"))
    return dest


def make_prepared(bundle: str, root: Path, num: int = 8, seed: int = 0) -> Path:
    """Synthetic raw data for ``bundle`` imported with the real importer; returns the prepared folder."""
    from vmunet_monai.data import demo_data, prepare

    raw, out = Path(root) / f"{bundle}_raw", Path(root) / f"{bundle}_prepared"
    demo_data(bundle, str(raw), num=num, seed=seed)
    prepare(bundle, str(raw), str(out))
    return out


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command with the repository on ``PYTHONPATH``; fail with its output if it fails."""
    # explicit UTF-8: progress bars print non-ASCII characters, and a test that writes DICOM (GDCM) can leave
    # this process in the C locale, whose default decoding is ASCII
    proc = subprocess.run(cmd, cwd=str(cwd), env=dict(run_env(), PYTHONIOENCODING="utf-8"), capture_output=True,
                          text=True, encoding="utf-8", errors="replace", timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def bundle_run(bundle: str, configs: list[str], bundle_root: Path, dataset_dir: Path, overrides: dict,
               run_id: str | None = None, cwd: Path | None = None, processes: int = 1) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run [run_id] --config_file ... --bundle_root ... --dataset_dir ...``, under
    ``torchrun --nproc_per_node processes`` when ``processes`` > 1."""
    files = [config_path(bundle, c) for c in configs]
    config_arg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    cmd = [PYTHON]
    if processes > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(processes)]
    cmd += ["-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", config_arg, "--bundle_root", str(bundle_root), "--dataset_dir", str(dataset_dir)]
    cmd += cli_args(overrides)
    if processes > 1:
        # torch's gloo backend can abort a rank at interpreter exit, after the run's work and its
        # destroy_process_group() ("terminate called without an active exception", SIGABRT: gloo's threads
        # outliving the interpreter; see pytorch/pytorch PR 179291). Seen once in about 70 two-process runs
        # here, so such a run is repeated once; any other failure, or the same abort twice, fails the test.
        try:
            return run(cmd, cwd or bundle_root)
        except AssertionError as exc:
            if "terminate called without an active exception" not in str(exc):
                raise
    return run(cmd, cwd or bundle_root)


_TEMPORARY_ROOTS: list[str] = []  # the folders workflow() made, removed when the test process exits


@atexit.register
def _remove_temporary_roots() -> None:
    for folder in _TEMPORARY_ROOTS:
        shutil.rmtree(folder, ignore_errors=True)


def workflow(bundle: str, configs: list[str], workflow_type: str, **overrides):
    """A ``ConfigWorkflow`` on the bundle's configs (not initialised). Without ``bundle_root`` it gets a fresh
    temporary folder: the configs' default ``.`` would put the TensorBoard files and checkpoints of a parsed trainer
    into the folder the tests run from."""
    import tempfile

    from monai.bundle import ConfigWorkflow

    if "bundle_root" not in overrides:
        overrides["bundle_root"] = tempfile.mkdtemp(prefix="vmunet-test-bundle-")
        _TEMPORARY_ROOTS.append(overrides["bundle_root"])

    return ConfigWorkflow(
        config_file=[config_path(bundle, c) for c in configs] if len(configs) > 1 else config_path(bundle, configs[0]),
        meta_file=config_path(bundle, "metadata.json"),
        logging_file=config_path(bundle, "logging.conf"),
        workflow_type=workflow_type,
        **overrides,
    )


def run_workflow(bundle: str, configs: list[str], workflow_type: str, **overrides):
    """:func:`workflow`, initialised, run and finalised in this process; returns it."""
    wf = workflow(bundle, configs, workflow_type, **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf
