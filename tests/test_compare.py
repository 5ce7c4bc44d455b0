"""Comparing evaluations (``vmunet_monai compare``) and the bundles' baseline overlays that feed it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_helpers import BUNDLES, config_path

from vmunet_monai.cli import main
from vmunet_monai.evaluation.binary import make_record, write_report
from vmunet_monai.evaluation.compare import Model, compare_models, read_table, run_compare
from vmunet_monai.evaluation.ct import write_case_csv
from vmunet_monai.validation import InputError

BASELINES = ("unet", "swin_unetr")
BUNDLE_NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())


def _binary_eval(folder, noise, seed, n=12, groups=("CVC-300", "Kvasir"), size=16):
    """An evaluation folder as evaluate.json writes it: n images of two test sets, masks flipped at ``noise``,
    scored at ``size`` x ``size`` pixels."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(99)  # the same ground truth for every model
    records = []
    for i in range(n):
        gt = (truth.random((size, size)) > 0.5).astype(np.float32)
        flip = rng.random(gt.shape) < noise
        pred = np.where(flip, 1 - gt, gt)
        records.append(make_record(f"img{i:02d}", pred, gt, group=groups[i * len(groups) // n]))
    write_report(records, folder, prefix="metrics_test", plot=False)
    return folder


def _ct_eval(folder, dice, hd95, missed_case=None):
    """A Synapse per_case.csv: per case and organ the given Dice and HD95 (a missed organ has no HD95)."""
    organs = ("aorta", "liver", "spleen")
    rows = []
    for c, (d, h) in enumerate(zip(dice, hd95)):
        row = {"case": f"case{c:04d}", "dice": {o: d for o in organs}, "hd95_mm": {o: h for o in organs},
               "status": {o: "scored" for o in organs}}
        if c == missed_case:
            row["dice"]["aorta"], row["hd95_mm"]["aorta"], row["status"]["aorta"] = 0.0, math.nan, "missed"
        rows.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    write_case_csv(rows, str(folder / "per_case.csv"))
    return folder


def test_a_model_worse_on_every_image_is_found_worse_with_exact_wilcoxon(tmp_path, capsys):
    good = _binary_eval(tmp_path / "good", 0.02, 1)
    bad = _binary_eval(tmp_path / "bad", 0.2, 2)
    result = run_compare([str(good), str(bad)], labels="vmunet,unet", out=str(tmp_path / "cmp"))
    pair = result["overall"]["against_first"][0]
    good_dice = [v["dice"] for v in read_table(good).values.values()]
    bad_dice = [v["dice"] for v in read_table(bad).values.values()]
    assert pair["n_paired"] == 12 and (pair["better"], pair["same"], pair["worse"]) == (0, 0, 12)
    assert pair["mean_diff"] == pytest.approx(np.mean(bad_dice) - np.mean(good_dice))
    assert pair["ci95"][0] <= pair["mean_diff"] <= pair["ci95"][1] < 0
    assert pair["p_wilcoxon"] == pytest.approx(2 / 2**12)  # exact two-sided: every difference has one sign
    assert set(result["groups"]) == {"CVC-300", "Kvasir"}
    assert [result["groups"][g]["n_cases"] for g in ("CVC-300", "Kvasir")] == [6, 6]
    assert result["groups"]["Kvasir"]["against_first"][0]["p_wilcoxon"] == pytest.approx(2 / 2**6)
    printed = capsys.readouterr().out
    assert "against vmunet" in printed and "test set Kvasir:" in printed and "0/0/12" in printed
    written = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert written["overall"]["models"][1]["label"] == "unet"
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10000


def test_identical_evaluations_differ_by_nothing(tmp_path):
    a = _binary_eval(tmp_path / "a", 0.1, 3)
    result = compare_models([Model("a", [read_table(a)]), Model("b", [read_table(a)])])
    pair = result["overall"]["against_first"][0]
    assert pair["mean_diff"] == 0 and pair["p_wilcoxon"] == 1.0 and pair["same"] == 12
    assert pair["ci95"] == [0.0, 0.0]


def test_runs_of_one_model_are_averaged_case_by_case(tmp_path):
    ref = read_table(_binary_eval(tmp_path / "ref", 0.05, 4))
    runs = [read_table(_binary_eval(tmp_path / f"seed{s}", 0.1 + 0.05 * s, 10 + s)) for s in range(3)]
    result = compare_models([Model("ref", [ref]), Model("seeds", runs)])
    seeds = result["overall"]["models"][1]
    run_means = [np.mean([v["dice"] for v in r.values.values()]) for r in runs]
    assert seeds["run_means"] == pytest.approx(run_means)
    assert seeds["runs_mean"] == pytest.approx(np.mean(run_means))
    assert seeds["runs_sd"] == pytest.approx(np.std(run_means, ddof=1))
    case = "CVC-300/img03"
    assert seeds["per_case"][case] == pytest.approx(np.mean([r.values[case]["dice"] for r in runs]))
    assert result["overall"]["models"][0]["runs_sd"] != result["overall"]["models"][0]["runs_sd"]  # NaN: one run


def test_synapse_tables_hd95_lower_is_better_and_undefined_cases_are_left_out(tmp_path, capsys):
    a = _ct_eval(tmp_path / "a", dice=[0.8] * 6, hd95=[10.0] * 6)
    b = _ct_eval(tmp_path / "b", dice=[0.85] * 6, hd95=[8.0, 8.0, 8.0, 8.0, 8.0, 12.0], missed_case=0)
    by_dice = run_compare([str(a), str(b)], metric="dice_liver")
    assert by_dice["overall"]["against_first"][0]["better"] == 6
    hd = run_compare([str(a), str(b)], metric="hd95_mm_aorta")
    pair = hd["overall"]["against_first"][0]
    assert hd["lower_is_better"] and (pair["n_paired"], pair["n_undefined"]) == (5, 1)
    assert (pair["better"], pair["worse"]) == (4, 1)  # 8 mm beats 10 mm; 12 mm does not
    mean = run_compare([str(a), str(b)], metric="hd95", out=str(tmp_path / "cmp"))
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10000  # with the per-organ panel
    assert mean["column"] == "mean_hd95_mm" and set(mean["organs"]) == {"aorta", "liver", "spleen"}
    liver = mean["organs"]["liver"]
    assert liver["means"] == {"a": 10.0, "b": pytest.approx(np.mean([8.0] * 5 + [12.0]))}
    assert (liver["against_first"][0]["better"], liver["against_first"][0]["worse"]) == (5, 1)
    assert mean["organs"]["aorta"]["against_first"][0]["n_paired"] == 5  # the missed aorta has no HD95
    overall = mean["overall"]["against_first"][0]  # nor has its case a mean HD95 (it was the others' mean, 8 mm)
    assert (overall["n_paired"], overall["n_undefined"]) == (5, 1)
    assert "note: 1 case(s) left out of the pairing of b" in capsys.readouterr().out


def test_runs_of_one_model_are_named_by_what_their_folders_share(tmp_path):
    folds = [str(_binary_eval(tmp_path / f"fold{k}", 0.05 * (k + 1), k)) for k in range(3)]
    other = [str(_binary_eval(tmp_path / name / "eval", 0.1, k)) for k, name in enumerate(("a", "b"))]
    oof = [str(_binary_eval(tmp_path / f"fold{k}" / "oof", 0.1, k)) for k in range(2)]
    assert run_compare([",".join(oof)])["overall"]["models"][0]["label"] == "fold*/oof"
    result = run_compare([",".join(folds), ",".join(other), folds[0]])
    assert [m["label"] for m in result["overall"]["models"]] == ["fold*", "eval (2 runs)", "fold0"]
    assert result["overall"]["models"][0]["runs"] == [str(Path(f) / "metrics_test_per_image.csv") for f in folds]


def test_out_of_fold_evaluations_join_as_one_model(tmp_path, capsys):
    """Runs with no case in common (each fold's evaluation on the cases it held out) are read as one evaluation:
    every case once, from its fold, the spread over folds from each fold's mean, paired with a full evaluation."""
    full = _binary_eval(tmp_path / "full", 0.1, 1)
    rng, truth = np.random.default_rng(5), np.random.default_rng(99)
    records = []
    for i in range(12):
        gt = (truth.random((16, 16)) > 0.5).astype(np.float32)
        pred = np.where(rng.random(gt.shape) < 0.02 * (1 + i // 6), 1 - gt, gt)
        records.append(make_record(f"img{i:02d}", pred, gt, group=("CVC-300", "Kvasir")[i // 6]))
    for k in range(2):  # fold k held out img00-05 or img06-11
        write_report(records[6 * k: 6 * k + 6], tmp_path / f"fold{k}", prefix="metrics_validation", plot=False)
    folds = ",".join(str(tmp_path / f"fold{k}") for k in range(2))
    result = run_compare([str(full), folds])
    model = result["overall"]["models"][1]
    assert model["label"] == "fold*" and model["folds"] is True and model["n_cases"] == 12
    dice = [r["dice"] for r in records]
    assert model["run_means"] == pytest.approx([np.mean(dice[:6]), np.mean(dice[6:])])
    assert model["mean"] == pytest.approx(np.mean(dice))
    assert result["overall"]["against_first"][0]["n_paired"] == 12
    out = capsys.readouterr().out
    assert "fold*: 2 runs with no case in common, read as the folds of one cross-validation" in out
    assert "(folds)" in out
    # runs that share cases stay runs of one model, paired through the cases they share
    assert run_compare([str(full), f"{full},{tmp_path / 'fold0'}"])["overall"]["n_cases"] == 6


def test_cases_missing_from_one_table_are_left_out_and_named(tmp_path, capsys):
    a = _ct_eval(tmp_path / "a", dice=[0.8] * 6, hd95=[10.0] * 6)
    b = _ct_eval(tmp_path / "b", dice=[0.7] * 4, hd95=[10.0] * 4)
    result = run_compare([str(a), str(b)])
    assert result["overall"]["n_cases"] == 4
    assert result["cases_left_out"] == {str(a / "per_case.csv"): ["case0004", "case0005"]}
    assert "left out: 2 case(s)" in capsys.readouterr().out


def test_bad_inputs_are_refused_by_name(tmp_path):
    img = _binary_eval(tmp_path / "img", 0.1, 5)
    vol = _ct_eval(tmp_path / "vol", dice=[0.8] * 3, hd95=[5.0] * 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no per-case table here"):
        read_table(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_table(tmp_path / "nowhere")
    write_report([make_record("x", np.ones(4), np.ones(4))], img, prefix="metrics_val", plot=False)
    with pytest.raises(InputError, match="several per-case tables .*metrics_test_per_image.csv.*name one"):
        read_table(img)
    table = img / "metrics_test_per_image.csv"
    # the PraNet-protocol table beside a polyp evaluation's own: the folder means the bundle's; named, it is read
    from vmunet_monai.evaluation import pranet

    native = tmp_path / "native"
    write_report([make_record("x", np.ones(4), np.ones(4))], native, prefix="metrics_test", plot=False)
    pranet.write_report([pranet.image_scores("x", np.eye(8), np.eye(8) > 0)], native, prefix="metrics_test")
    assert read_table(native).path.name == "metrics_test_per_image.csv"
    named = read_table(native / "metrics_test_pranet_per_image.csv")
    assert named.kind == "image" and named.values["all/x"]["mean_dice"] > 0.9
    assert run_compare([str(named.path)] * 2, labels="a,b", metric="mae")["lower_is_better"] is True
    with pytest.raises(InputError, match="mix 2D per-image and Synapse"):
        run_compare([str(table), str(vol)])
    with pytest.raises(InputError, match="no column for --metric 'hd95'; choose from dice, iou"):
        run_compare([str(table)], metric="hd95")
    with pytest.raises(InputError, match="1 label"):
        run_compare([str(table), str(table)], labels="only")
    with pytest.raises(InputError, match="labels .* repeat"):
        run_compare([str(table), str(table)], labels="x,x")
    other = _binary_eval(tmp_path / "other", 0.1, 6, groups=("ETIS",))
    with pytest.raises(InputError, match="no case in common"):
        run_compare([str(table), str(other)])
    broken = tmp_path / "broken_per_image.csv"
    lines = table.read_text().splitlines()  # name,group,dice,...
    cells = lines[3].split(",")
    lines[3] = ",".join(cells[:2] + ["high"] + cells[3:])
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"broken_per_image.csv line 4: column 'dice' holds 'high'"):
        read_table(broken)
    lines[3] = lines[2]
    broken.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="line 4: case .* appears twice"):
        read_table(broken)
    alien = tmp_path / "alien_per_image.csv"
    alien.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a per-case table"):
        read_table(alien)


def test_compare_command_prints_and_refuses_in_one_line(tmp_path, capsys):
    a = _binary_eval(tmp_path / "a", 0.05, 7)
    b1, b2 = _binary_eval(tmp_path / "b1", 0.1, 8), _binary_eval(tmp_path / "b2", 0.15, 9)
    main(["compare", str(a), f"{b1},{b2}", "--labels", "vm,unet", "--metric", "iou"])
    printed = capsys.readouterr().out
    assert "metric iou (column iou), 12 cases" in printed
    assert [line.split()[:3] for line in printed.splitlines() if line.startswith("unet ")][0] == ["unet", "2", "12"]
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(a), str(tmp_path / "missing")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'missing'}: no such file or folder")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
@pytest.mark.parametrize("baseline", BASELINES)
def test_baseline_overlays_swap_the_network_and_keep_everything_apart(bundle, baseline):
    """train.json + baseline_<name>.json builds MONAI's network with the bundle's channels, and writes its
    weights, evaluation and logs into their own folders, so the VM-UNet's are never overwritten."""
    from monai.bundle import ConfigParser

    from vmunet_monai import benchmark

    overlay = config_path(bundle, f"baseline_{baseline}.json")
    meta = json.loads(open(config_path(bundle, "metadata.json")).read())
    fmt = meta["network_data_format"]
    for base in (["train.json"], ["train.json", "evaluate.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([config_path(bundle, c) for c in base] + [overlay])
        parser["bundle_root"] = "/b"
        net = parser.get_parsed_content("network_def")
        assert type(net).__name__ == {"unet": "BasicUNet", "swin_unetr": "SwinUNETR"}[baseline]
        if base[0] == "train.json":
            dirs = [parser.get_parsed_content(k) for k in ("ckpt_dir", "output_dir", "log_dir")]
            assert dirs == [f"/b/{d}/baseline_{baseline}" for d in ("models", "eval", "runs")]
        else:
            assert parser.get_parsed_content("checkpoint") == f"/b/models/baseline_{baseline}/model.pt"
            assert parser.get_parsed_content("output_dir") == f"/b/eval/baseline_{baseline}"
    with torch.no_grad():
        out = net.eval()(torch.rand(1, fmt["inputs"]["image"]["num_channels"], 64, 64))
    assert out.shape == (1, fmt["outputs"]["pred"]["num_channels"], 64, 64)
    # the same networks, at the same widths, as the benchmark's --baselines times
    config = json.loads(open(overlay).read())["network_def"]
    kwargs = {k: v for k, v in config.items() if k not in ("_target_", "in_channels", "out_channels")}
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in benchmark.BASELINE_ARGS[baseline].items()} == kwargs


def test_evaluations_record_their_environment_and_compare_notes_a_difference(tmp_path, capsys):
    from vmunet_monai.doctor import ENVIRONMENT_KEYS
    from vmunet_monai.evaluation.ct import _write_outputs

    first = _binary_eval(tmp_path / "first", 0.05, 1)
    environment = json.loads((first / "metrics_test_summary.json").read_text())["environment"]
    assert set(ENVIRONMENT_KEYS) <= set(environment)
    assert environment["torch"] == torch.__version__ and environment["scan_backend"] in ("cpu", "torch")
    assert environment["deterministic_algorithms"] is torch.are_deterministic_algorithms_enabled()
    second = _binary_eval(tmp_path / "second", 0.1, 2)
    run_compare([str(first), str(second)], labels="a,b")
    assert "different environments" not in capsys.readouterr().out  # the same process: nothing to say
    summary_path = second / "metrics_test_summary.json"
    summary = json.loads(summary_path.read_text())
    summary["environment"].update(device="NVIDIA H100 80GB HBM3 (cuda:0)", scan_backend="mamba_ssm")
    summary_path.write_text(json.dumps(summary))
    result = run_compare([str(first), str(second)], labels="a,b")
    assert set(result["environment_differences"]) == {"device", "scan_backend"}
    assert result["environment_differences"]["scan_backend"]["b"] == "mamba_ssm"
    out = capsys.readouterr().out
    assert "note: the runs were evaluated in different environments (device: a " in out
    assert "scan_backend: a " in out and "b mamba_ssm" in out
    # Synapse evaluations record it too
    rows = [{"case": "0001", "dice": {"liver": 0.9}, "hd95_mm": {"liver": 2.0}, "status": {"liver": "scored"}}]
    ct_dir = tmp_path / "ct"
    ct_dir.mkdir()
    assert _write_outputs(rows, str(ct_dir), "")["environment"]["torch"] == torch.__version__
    assert json.loads((ct_dir / "summary.json").read_text())["environment"]["vmunet_monai"]


def test_compare_shows_the_calibration_each_evaluation_wrote(tmp_path, capsys):
    """Where an evaluation wrote its calibration beside its table (``metrics_test_calibration.json``,
    ``calibration.json`` for volumes), ``compare`` lists each model's ECE and Brier score, mean ± sd over its runs
    that have one; models without are not listed, and a model of none leaves the block out."""
    from vmunet_monai.evaluation.calibration import Calibration

    rng = np.random.default_rng(8)

    def calibrated(folder, sure: float):  # a model that says about `sure` where it is right 80% of the time
        cal = Calibration()
        truth = rng.random(5000) < 0.8
        cal.add(np.where(truth, sure + 0.002, sure + 0.001), truth)  # a hair less where it is wrong
        (folder / "metrics_test_calibration.json").write_text(json.dumps(cal.summary()))
        return cal.summary()

    ref = _binary_eval(tmp_path / "ref", 0.05, 1)
    seeds = [_binary_eval(tmp_path / f"seed{s}", 0.1, 2 + s) for s in range(3)]
    plain = _binary_eval(tmp_path / "plain", 0.1, 9)
    wrote = [calibrated(ref, 0.8)] + [calibrated(seeds[s], 0.9 + 0.05 * s) for s in (0, 1)]  # seed2 wrote none
    result = run_compare([str(ref), ",".join(map(str, seeds)), str(plain)], labels="ref,seeds,plain")
    cal = result["calibration"]
    assert set(cal) == {"ref", "seeds"}  # plain wrote none
    assert cal["ref"]["runs"] == 1 and cal["ref"]["ece"] == pytest.approx(wrote[0]["ece"]) and cal["ref"]["ece"] < 0.05
    assert (cal["seeds"]["runs"], cal["seeds"]["of_runs"]) == (2, 3)
    assert cal["seeds"]["ece"] == pytest.approx(np.mean([w["ece"] for w in wrote[1:]]))
    assert cal["seeds"]["brier_sd"] == pytest.approx(np.std([w["brier"] for w in wrote[1:]], ddof=1))
    assert cal["seeds"]["ece"] > cal["ref"]["ece"] and cal["seeds"]["kind"] == "foreground"
    assert cal["seeds"]["auroc"] == pytest.approx(np.mean([w["errors"]["auroc"] for w in wrote[1:]]))
    assert cal["ref"]["auroc"] == pytest.approx(1.0)  # its errors are exactly its least sure pixels
    printed = capsys.readouterr().out
    assert "calibration of the probabilities" in printed
    assert f"{cal['seeds']['ece']:.4f} ± {cal['seeds']['ece_sd']:.4f}" in printed and "2/3" in printed
    # volumes: calibration.json beside per_case.csv; an unreadable file counts as none
    a = _ct_eval(tmp_path / "ct_a", [0.8, 0.9], [5.0, 4.0])
    b = _ct_eval(tmp_path / "ct_b", [0.7, 0.9], [6.0, 4.0])
    (a / "calibration.json").write_text(json.dumps({"ece": 0.05, "brier": 0.02, "kind": "top_label"}))
    (b / "calibration.json").write_text("{not json")
    result = run_compare([str(a), str(b)])
    assert result["calibration"] == {"ct_a": {"runs": 1, "of_runs": 1, "ece": 0.05, "ece_sd": 0.0, "brier": 0.02,
                                              "brier_sd": 0.0, "auroc": None, "auroc_sd": None,
                                              "kind": "top_label"}}  # written before errors were counted
    assert "top_label" in capsys.readouterr().out
    result = run_compare([str(plain), str(seeds[2])])
    assert result["calibration"] == {} and "calibration of" not in capsys.readouterr().out


def test_tables_scored_at_different_sizes_are_noted(tmp_path, capsys):
    """evaluate.json scores at the network's input size, score and evaluate_native.json at each image's own: their
    Dice differ for that alone, so compare says so, naming the first image and its pixels in each table."""
    network = _binary_eval(tmp_path / "eval", 0.05, 1, size=16)
    native = _binary_eval(tmp_path / "native", 0.05, 2, size=24)
    same = _binary_eval(tmp_path / "same", 0.1, 3, size=24)
    result = run_compare([str(network), str(native)], labels="bundle,score")
    assert result["size_differences"] == {"cases": 12, "of": 12, "case": "CVC-300/img00",
                                          "pixels": {"bundle": 256, "score": 576}}
    out = capsys.readouterr().out
    assert "note: 12 of 12 images were scored at different sizes (first: CVC-300/img00, pixels: bundle 256, " \
        "score 576)" in out and "compare tables of one kind" in out
    assert run_compare([str(native), str(same)])["size_differences"] == {}
    assert "different sizes" not in capsys.readouterr().out
