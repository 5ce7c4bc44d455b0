"""``python -m vmunet_monai benchmark``: speed and memory of our networks and scan backends, as ratios
measured in one run (optionally beside the official VM-UNet built from a local checkout)."""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch

__all__ = ["run_benchmark", "time_scan", "time_forward"]

NETWORKS = {"vmunet": "VMUNet", "vmunet_v2": "VMUNetV2", "mamba_unet": "MambaUNet"}


# the baselines' widths; the bundles' configs/baseline_<name>.json train the same networks
BASELINE_ARGS = {
    # the original U-Net's widths (two 3x3 convolutions per level, 64 to 1024 channels)
    "unet": {"spatial_dims": 2, "features": (64, 128, 256, 512, 1024, 64)},
    "swin_unetr": {"spatial_dims": 2, "feature_size": 48},
}


def _baseline_unet():
    from monai.networks.nets import BasicUNet

    return BasicUNet(in_channels=3, out_channels=1, **BASELINE_ARGS["unet"])


def _baseline_swin_unetr():
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=3, out_channels=1, **BASELINE_ARGS["swin_unetr"])


# CNN and transformer U-Nets from MONAI, timed on the same inputs (``benchmark --baselines``)
BASELINES = {"unet": _baseline_unet, "swin_unetr": _baseline_swin_unetr}
BASELINE_NEEDS = {"swin_unetr": "einops"}  # MONAI's optional dependencies of a baseline


def _baseline_missing(name: str) -> str | None:
    """Why baseline ``name`` cannot be built here (a missing package), or None."""
    import importlib.util

    need = BASELINE_NEEDS.get(name)
    if need and importlib.util.find_spec(need) is None:
        return f"MONAI's {name} needs {need} (pip install {need})"
    return None


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, repeats, device, warmup=1):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _stage1_inputs(batch, device, dim=768, length=4096, n_state=16, groups=4, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g) * scale).to(device)

    return dict(u=r(batch, dim, length), delta=r(batch, dim, length, scale=0.5),
                A=-torch.arange(1, n_state + 1.0).repeat(dim, 1).to(device), B=r(batch, groups, n_state, length),
                C=r(batch, groups, n_state, length), D=torch.ones(dim, device=device), delta_bias=r(dim, scale=0.1))


def time_scan(backend, device="cpu", batch=1, repeats=3, backward=False, **shape):
    """Median seconds of one stage-1 selective scan (forward, or forward + backward)."""
    from vmunet_monai.ops import selective_scan

    inputs = _stage1_inputs(batch, device, **shape)
    if backward:
        for k in ("u", "delta", "B", "C"):
            inputs[k].requires_grad_(True)

    def step():
        y = selective_scan(**inputs, delta_softplus=True, backend=backend)
        if backward:
            y.sum().backward()

    return _median_time(step, repeats, device, warmup=1 if backend != "reference" else 0)


def _build(name, backend, device, out_channels=1):
    import vmunet_monai.networks as nets

    return getattr(nets, NETWORKS[name])(out_channels=out_channels, scan_backend=backend).to(device)


def _set_recompute(model, on):
    for m in model.modules():
        if hasattr(m, "recompute"):
            m.recompute = on


def time_forward(model, x, repeats, device, autocast_dtype=None):
    model.eval()

    def step():
        with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=autocast_dtype,
                                             enabled=autocast_dtype is not None):
            model(x)

    return _median_time(step, repeats, device)


def time_train_step(model, x, repeats, device, autocast_dtype=None, sigmoid_output=False):
    """Median seconds of forward + backward + AdamW step, and the peak memory (bytes, CUDA only)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = (torch.rand(x.shape[0], 1, *x.shape[-2:], device=device) > 0.5).float()
    loss_fn = torch.nn.BCELoss() if sigmoid_output else torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(x)
            out = out[0] if isinstance(out, list) else out
        loss_fn(out.float(), target).backward()
        opt.step()

    step()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = _median_time(step, repeats, device, warmup=1)
    peak = torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None
    return t, peak


def _machine(device):
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine()}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _progress(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


def time_forward_graphed(model, x, repeats, device, autocast_dtype=None):
    """Like :func:`time_forward`, replaying a captured CUDA graph (see :mod:`vmunet_monai.cuda_graphs`)."""
    from vmunet_monai.cuda_graphs import GraphedInference

    graphed = GraphedInference(model, autocast_dtype=autocast_dtype)
    graphed(x)  # capture
    return _median_time(lambda: graphed(x), repeats, device)


# SS2D class options a variant may set (``benchmark --variants``); any other field is a KernelConfig field
SS2D_OPTIONS = ("channels_last_scan", "fused_norm_gate", "fused_dt_proj")
# named sets of options a variant may list by name
VARIANT_PRESETS = {"fast": dict.fromkeys(SS2D_OPTIONS, True)}


class Variant:
    """One configuration of our networks timed beside the plain one (``benchmark --variants``): SS2D
    class options and KernelConfig fields on top of the run's own."""

    def __init__(self, label: str, ss2d: dict, kernels: dict):
        self.label, self.ss2d, self.kernels = label, ss2d, kernels

    def effect(self, backend: str, run_options: dict) -> tuple:
        """What the variant changes on ``backend``: the SS2D options in force, and the KernelConfig fields
        on triton only (the other backends run no triton scan kernels)."""
        kernels = self.kernels if backend == "triton" else {}
        return tuple(sorted({**run_options, **self.ss2d}.items())), tuple(sorted(kernels.items()))

    def __repr__(self):
        return f"Variant({self.label!r}, ss2d={self.ss2d}, kernels={self.kernels})"


def parse_variants(text, base_config=None) -> list[Variant]:
    """``"fast;fast,bwd_stepwise=true;steps16:bwd_stepwise=true,bwd_step_block_d=16"`` -> variants.

    Variants are separated by ``;``; each is an optional ``LABEL:`` and comma-separated items, each an
    SS2D option or a KernelConfig field as ``NAME=VALUE`` (integer or true/false), or the name of a
    preset (``fast``: the three SS2D options on). Without a label the text itself labels the rows.
    A field KernelConfig does not have, or a value it refuses, raises ``ValueError`` naming the variant."""
    from vmunet_monai.ops import triton_scan
    from vmunet_monai.ops.triton_aot import parse_config

    base_config = base_config or triton_scan.kernel_config()
    if isinstance(text, (list, tuple)):  # fire turns "a,b" without ';' into a tuple
        text = ",".join(str(t) for t in text)
    variants = []
    for part in str(text or "").split(";"):
        part = part.strip()
        if not part:
            continue
        label, sep, body = part.partition(":")
        if not sep:
            label, body = part, part
        label = label.strip()
        ss2d, fields = {}, []
        for item in (t.strip() for t in body.split(",")):
            if not item:
                continue
            if "=" not in item and item in VARIANT_PRESETS:
                ss2d.update(VARIANT_PRESETS[item])
            elif item.partition("=")[0].strip() in SS2D_OPTIONS:
                ss2d.update(parse_config(item))
            elif "=" not in item:
                raise ValueError(f"variant {part!r}: {item!r} is neither NAME=VALUE nor a preset "
                                 f"({', '.join(VARIANT_PRESETS)})")
            else:
                fields.append(item)
        try:
            kernels = parse_config(",".join(fields)) if fields else {}
            base_config.replace(**kernels)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"variant {part!r}: {exc}") from exc
        if not ss2d and not kernels:
            raise ValueError(f"variant {part!r} sets nothing")
        if any(v.label == label for v in variants):
            raise ValueError(f"variant label {label!r} is used twice")
        variants.append(Variant(label, ss2d, kernels))
    return variants


def run_benchmark(device="cpu", networks="vmunet", size=256, batch=1, repeats=5, backends="auto", reference=None,
                  scan_only=False, out=None, cuda_graphs=False, store_activations=False, channels_last_scan=False,
                  fused_norm_gate=False, fused_dt_proj=False, compile=False, baselines="", deterministic=False,
                  kernel_config="", variants=""):
    """Run the benchmark and print a table; see ``python -m vmunet_monai benchmark --help``.
    ``kernel_config``: KernelConfig fields for the triton kernels during the run, e.g. "bwd_stepwise=true";
    ``variants``: further configurations of our networks timed in the same run (:func:`parse_variants`)."""
    from vmunet_monai.layers import SS2D
    from vmunet_monai.ops import triton_scan
    from vmunet_monai.ops.triton_aot import parse_config

    saved = triton_scan.kernel_config()
    try:
        cfg = saved.replace(**parse_config(kernel_config)) if kernel_config else saved
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: benchmark --kernel_config {kernel_config!r}: {exc}") from exc
    try:
        extra = parse_variants(variants, cfg)
    except ValueError as exc:
        raise SystemExit(f"error: benchmark --variants: {exc}") from exc
    saved_ss2d = {k: getattr(SS2D, k) for k in SS2D_OPTIONS}
    triton_scan.kernel_config(cfg)
    try:
        return _run_benchmark(device, networks, size, batch, repeats, backends, reference, scan_only, out, cuda_graphs,
                              store_activations, channels_last_scan, fused_norm_gate, fused_dt_proj, compile,
                              baselines, deterministic, repr(cfg) if kernel_config else None, extra)
    finally:
        triton_scan.kernel_config(saved)
        for k, v in saved_ss2d.items():
            setattr(SS2D, k, v)


def _run_benchmark(device, networks, size, batch, repeats, backends, reference, scan_only, out, cuda_graphs,
                   store_activations, channels_last_scan, fused_norm_gate, fused_dt_proj, compile, baselines,
                   deterministic, kernel_config, variants=()):
    from vmunet_monai.layers import SS2D
    from vmunet_monai.ops import triton_scan

    from vmunet_monai.validation import check_at_least, check_device, comma_list

    for option, value, least in (("batch", batch, 1), ("repeats", repeats, 1), ("size", size, 32)):
        check_at_least(f"benchmark --{option}", value, least)
    nets = comma_list(networks)
    for name in nets:
        if name not in NETWORKS:
            raise SystemExit(f"error: unknown network {name!r}; choose from {', '.join(NETWORKS)}")
    base = [n for n in comma_list(baselines) if n]
    for name in base:
        if name not in BASELINES:
            raise SystemExit(f"error: unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    SS2D.channels_last_scan = bool(channels_last_scan)
    SS2D.fused_norm_gate = bool(fused_norm_gate)
    SS2D.fused_dt_proj = bool(fused_dt_proj)
    run_options = {k: getattr(SS2D, k) for k in SS2D_OPTIONS}
    run_config = triton_scan.kernel_config()
    from vmunet_monai.ops import backend_status, resolve_backend
    from vmunet_monai.ops.dispatch import DETERMINISTIC_BACKENDS

    device = str(check_device(device) or "cpu")
    dev_type = torch.device(device).type
    if backends == "auto":
        names = [resolve_backend(device)]
    else:
        names = comma_list(backends)
    from vmunet_monai.ops.dispatch import BACKENDS

    for b in names:
        if b not in BACKENDS:
            raise SystemExit(f"error: unknown scan backend {b!r}; choose from {', '.join(sorted(BACKENDS))} or auto")
    if reference:  # checked before any timing: a wrong path or a missing package would otherwise show at the end
        from vmunet_monai.official import load_official_vmunet, mamba_style_reference_scan

        try:
            load_official_vmunet(reference, scan_fn=mamba_style_reference_scan)
        except (OSError, ImportError) as exc:
            raise SystemExit(f"error: benchmark --reference {reference}: {exc}") from exc
    usable = [b for b in names if backend_status(b).available and dev_type in backend_status(b).devices]
    if not usable:  # nothing asked for can run: an error, not a table of the reference alone
        why = "; ".join(f"{b}: {backend_status(b).detail}" for b in names)
        raise SystemExit(f"error: benchmark --backends {','.join(names)}: none of them runs on {device} ({why})")
    for b in [b for b in names if b not in usable]:
        print(f"skipping backend {b}: {backend_status(b).detail}")
    results = {"machine": _machine(device), "device": device, "scan": {}, "networks": []}
    print(f"machine: {results['machine']}")
    if kernel_config:
        results["kernel_config"] = kernel_config
        print(f"triton kernels: {kernel_config}")
    if variants:
        results["variants"] = {v.label: {**v.ss2d, **v.kernels} for v in variants}
        for v in variants:
            print(f"variant {v.label}: {', '.join(f'{k}={val}' for k, val in {**v.ss2d, **v.kernels}.items())}")

    # stage-1 scan of VM-UNet: (batch, 768, 4096), N = 16, 4 groups
    scan_batch = 1 if dev_type == "cpu" else 32
    scan_backends = list(dict.fromkeys(usable + (["reference"] if dev_type == "cpu" else [])))
    bar = _progress(len(scan_backends), "stage-1 scan")
    for b in scan_backends:
        results["scan"][b] = time_scan(b, device, batch=scan_batch, repeats=1 if b == "reference" else repeats)
        bar.update()
    bar.close()
    if dev_type == "cpu":  # what the official code falls back to without mamba-ssm's kernel
        from vmunet_monai.official import mamba_style_reference_scan

        inputs = _stage1_inputs(scan_batch, device)
        with torch.no_grad():
            results["scan"]["mamba_ssm_reference_algorithm"] = _median_time(
                lambda: mamba_style_reference_scan(**inputs, delta_softplus=True), 1, device, warmup=0)
    print(f"\nstage-1 selective scan, forward, batch {scan_batch} x 768 x 4096, N=16 (median of the runs)")
    ref_t = results["scan"].get("reference")
    for b, t in results["scan"].items():
        ratio = "" if not ref_t or b == "reference" else (f"  {ref_t / t:6.1f}x faster than reference" if t <= ref_t
                                                            else f"  {t / ref_t:6.1f}x slower than reference")
        print(f"  {b:<30} {t * 1e3:10.2f} ms{ratio}")
    if scan_only:
        return _finish(results, out)

    x1 = torch.randn(1, 3, size, size, device=device)
    xb = torch.randn(batch, 3, size, size, device=device)
    dtypes = [None] if dev_type == "cpu" else [None, torch.bfloat16]
    jobs = [(n, b) for n in nets for b in usable]
    bar = _progress(len(jobs), "networks")
    for name, b in jobs:
        model = _build(name, b, device)
        for dt in dtypes:
            row = {"network": name, "backend": b, "precision": "bf16-autocast" if dt else "fp32",
                   "params_m": _params_m(model)}
            row["latency_b1_s"] = time_forward(model, x1, repeats, device, dt)
            if dev_type == "cuda":
                row["infer_img_s"] = batch / time_forward(model, xb, repeats, device, dt)
                t, peak = time_train_step(model, xb, repeats, device, dt)
                row["train_img_s"], row["train_peak_gib"] = batch / t, peak / 2**30
            results["networks"].append(row)
            if dev_type == "cuda" and store_activations:  # the same model with SS2D recomputation off
                _set_recompute(model, False)
                stored = {"network": name, "backend": f"{b}+store_all", "precision": row["precision"],
                          "params_m": row["params_m"]}
                t, peak = time_train_step(model, xb, repeats, device, dt)
                stored["train_img_s"], stored["train_peak_gib"] = batch / t, peak / 2**30
                results["networks"].append(stored)
                _set_recompute(model, True)
            if deterministic and b not in DETERMINISTIC_BACKENDS:
                print(f"no +deterministic row for backend {b}: its kernels sum with atomics in any mode")
            elif deterministic:  # as --determinism true trains: scan kernels without atomics or on one thread
                results["networks"].append(dict(_deterministic_row(model, row["precision"], name, b, x1, xb, batch,
                                                                   repeats, device, dt), params_m=row["params_m"]))
            if compile:  # the same model under torch.compile (one graph per input shape; compiled in warm-up)
                results["networks"].append(dict(_compiled_row(model, row["precision"], name, b, x1, xb, batch,
                                                              repeats, device, dt), params_m=row["params_m"]))
            if dev_type == "cuda" and cuda_graphs:
                graphed = {"network": name, "backend": f"{b}+graphs", "precision": row["precision"],
                           "params_m": row["params_m"]}
                graphed["latency_b1_s"] = time_forward_graphed(model, x1, repeats, device, dt)
                graphed["infer_img_s"] = batch / time_forward_graphed(model, xb, repeats, device, dt)
                results["networks"].append(graphed)
        del model
        bar.update()
        timed = {Variant("", {}, {}).effect(b, run_options)}
        for v in variants:  # a variant that changes nothing on this backend, or what one before did, is left out
            if v.effect(b, run_options) not in timed:
                timed.add(v.effect(b, run_options))
                try:
                    _variant_rows(results, v, run_options, run_config, name, b, x1, xb, batch, repeats, device,
                                  dtypes, cuda_graphs)
                except Exception as exc:  # noqa: BLE001 - one failing option must not cost the other rows
                    _failed_row(results, name, f"{b}[{v.label}]", v.label, exc, device)
    bar.close()

    for name in base:
        missing = _baseline_missing(name)
        if missing:
            print(f"skipping baseline {name}: {missing}")
            continue
        model = BASELINES[name]().to(device)
        for dt in dtypes:
            row = {"network": f"baseline_{name}", "backend": "-", "precision": "bf16-autocast" if dt else "fp32",
                   "params_m": _params_m(model), "latency_b1_s": time_forward(model, x1, repeats, device, dt)}
            if dev_type == "cuda":
                row["infer_img_s"] = batch / time_forward(model, xb, repeats, device, dt)
                t, peak = time_train_step(model, xb, repeats, device, dt)
                row["train_img_s"], row["train_peak_gib"] = batch / t, peak / 2**30
            results["networks"].append(row)
        del model
    if reference:
        try:
            _official_rows(results, reference, device, size, batch, repeats, dtypes, x1, xb)
        except Exception as exc:  # noqa: BLE001 - ours are timed already: print and keep them
            _failed_row(results, "official_vmunet", "official", None, exc, device)
    _print_networks(results)
    return _finish(results, out)


def _timed_row(model, label, precision, name, x1, xb, batch, repeats, device, dt):
    """Batch-1 latency of ``model`` and, on CUDA, inference and training throughput and peak memory."""
    row = {"network": name, "backend": label, "precision": precision}
    row["latency_b1_s"] = time_forward(model, x1, repeats, device, dt)
    if torch.device(device).type == "cuda":
        row["infer_img_s"] = batch / time_forward(model, xb, repeats, device, dt)
        t, peak = time_train_step(model, xb, repeats, device, dt)
        row["train_img_s"], row["train_peak_gib"] = batch / t, peak / 2**30
    return row


def _variant_rows(results, variant, run_options, run_config, name, backend, x1, xb, batch, repeats, device, dtypes,
                  cuda_graphs):
    """Rows of ``name`` on ``backend`` with ``variant``'s options on top of the run's, then the run's again."""
    from vmunet_monai.layers import SS2D
    from vmunet_monai.ops import triton_scan

    for k, v in {**run_options, **variant.ss2d}.items():
        setattr(SS2D, k, bool(v))
    triton_scan.kernel_config(run_config.replace(**variant.kernels))
    label = f"{backend}[{variant.label}]"
    try:
        model = _build(name, backend, device)
        for dt in dtypes:
            precision = "bf16-autocast" if dt else "fp32"
            results["networks"].append(dict(_timed_row(model, label, precision, name, x1, xb, batch, repeats, device,
                                                       dt), params_m=_params_m(model), variant=variant.label))
            if torch.device(device).type == "cuda" and cuda_graphs:
                graphed = {"network": name, "backend": f"{label}+graphs", "precision": precision,
                           "params_m": _params_m(model), "variant": variant.label,
                           "latency_b1_s": time_forward_graphed(model, x1, repeats, device, dt),
                           "infer_img_s": batch / time_forward_graphed(model, xb, repeats, device, dt)}
                results["networks"].append(graphed)
        del model
    finally:
        for k, v in run_options.items():
            setattr(SS2D, k, v)
        triton_scan.kernel_config(run_config)


def _failed_row(results, name, label, variant, exc, device):
    """Record and print a variant (or the official model) that failed: an option that does not compile or
    run here, memory. The rows after it are still timed, and all are printed and written."""
    from vmunet_monai.validation import error_summary

    error = error_summary(exc)
    print(f"\n{label}: failed, {error}; the run goes on without it", flush=True)
    results["networks"].append({"network": name, "backend": label, "precision": "-", "variant": variant,
                                "error": error})
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def _deterministic_row(model, precision, name, backend, x1, xb, batch, repeats, device, dt):
    """The same timings under torch.use_deterministic_algorithms(True) (warn-only, as bundles set it)."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _timed_row(model, f"{backend}+deterministic", precision, name, x1, xb, batch, repeats, device, dt)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _compiled_row(model, precision, name, backend, x1, xb, batch, repeats, device, dt):
    compiled = torch.compile(model, dynamic=False)
    return _timed_row(compiled, f"{backend}+compile", precision, name, x1, xb, batch, repeats, device, dt)


def _params_m(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def _official_rows(results, reference, device, size, batch, repeats, dtypes, x1, xb):
    from vmunet_monai.networks import VMUNet
    from vmunet_monai.official import copy_weights_to_official, load_official_vmunet, mamba_style_reference_scan

    official, scan_name = load_official_vmunet(reference, scan_fn=mamba_style_reference_scan)
    official = official.to(device)
    ours = VMUNet(out_channels=1).to(device).eval()
    copy_weights_to_official(ours, official)
    official.eval()
    with torch.no_grad():
        check = torch.randn(1, 3, 64, 64, device=device)
        diff = (torch.sigmoid(ours(check)) - official(check)).abs().max().item()
    print(f"\nofficial VM-UNet from {reference} ({scan_name}); same weights as ours, max |sigmoid(ours) - official| = {diff:.2e}")
    results["official_parity_max_abs_diff"] = diff
    slow = torch.device(device).type == "cpu"
    for dt in dtypes:
        row = {"network": "official_vmunet", "backend": scan_name, "precision": "bf16-autocast" if dt else "fp32",
               "params_m": _params_m(official)}
        row["latency_b1_s"] = time_forward(official, x1, 1 if slow else repeats, device, dt)
        if torch.device(device).type == "cuda":
            row["infer_img_s"] = batch / time_forward(official, xb, repeats, device, dt)
            t, peak = time_train_step(official, xb, repeats, device, dt, sigmoid_output=True)
            row["train_img_s"], row["train_peak_gib"] = batch / t, peak / 2**30
        results["networks"].append(row)


def _print_networks(results):
    rows = results["networks"]
    official = {r["precision"]: r for r in rows if r["network"] == "official_vmunet"}
    width = max([20] + [len(r["backend"]) for r in rows])
    print(f"\nnetwork              params M  {'backend':<{width}} precision       batch-1 latency   infer img/s"
          "   train img/s   train peak GiB")
    nan = float("nan")
    for r in rows:
        line = (f"{r['network']:<20} {r.get('params_m', nan):8.1f}  {r['backend']:<{width}} {r['precision']:<15} "
                f"{r.get('latency_b1_s', nan) * 1e3:12.1f} ms"
                f"   {r.get('infer_img_s', float('nan')):11.1f}   {r.get('train_img_s', float('nan')):11.1f}"
                f"   {r.get('train_peak_gib', float('nan')):14.2f}")
        print(line)
    for r in rows:
        o = official.get(r["precision"])
        if o is None or r is o or r["network"] != "vmunet":
            continue
        parts = [f"latency {o['latency_b1_s'] / r['latency_b1_s']:.1f}x faster"] if "latency_b1_s" in r else []
        if "infer_img_s" in r:
            parts.append(f"inference {r['infer_img_s'] / o['infer_img_s']:.2f}x")
        if "train_img_s" in r:
            parts.append(f"training {r['train_img_s'] / o['train_img_s']:.2f}x")
            parts.append(f"peak memory {r['train_peak_gib'] / o['train_peak_gib']:.2f}x")
        print(f"ratio ours({r['backend']}, {r['precision']}) / official: " + ", ".join(parts))


def _finish(results, out):
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"results written to {out}")
    return results
