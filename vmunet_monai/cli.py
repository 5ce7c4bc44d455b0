"""Command line: ``python -m vmunet_monai <command>`` (also installed as ``vmunet-monai``).

Every command is a thin wrapper over a library function; ``--help`` after a command shows its options.
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["Commands", "main"]


class Commands:
    """VM-UNet family for MONAI: set-up checks, benchmarks, GPU kernel checks, data, training demo, comparison of
    evaluations, scores of segmentations on disk (volumes, objects), prediction, export and packaging."""

    def doctor(self):
        """Versions, optional extras, devices and each selective-scan backend: available or not, why, and the fix."""
        from vmunet_monai.doctor import report

        print(report())

    def benchmark(self, device: str = "cpu", networks: str = "vmunet", size: int = 256, batch: int = 1,
                  repeats: int = 5, backends: str = "auto", reference: str | None = None,
                  scan_only: bool = False, out: str | None = None, cuda_graphs: bool = False,
                  store_activations: bool = False, channels_last_scan: bool = False,
                  fused_norm_gate: bool = False, fused_dt_proj: bool = False, compile: bool = False,
                  baselines: str = "", deterministic: bool = False, kernel_config: str = "", variants: str = ""):
        """Time the networks (and the stage-1 scan) on this machine; prints ratios measured in this run.

        Args:
            device: cpu or cuda.
            networks: comma-separated subset of vmunet, vmunet_v2, mamba_unet.
            size: square input size in pixels.
            batch: batch size for the throughput numbers.
            repeats: timed repetitions (the median is reported).
            backends: comma-separated scan backends, or auto.
            reference: path to a checkout of the official VM-UNet, timed beside ours in the same run (checked before
                anything is timed).
            scan_only: only time the stage-1 scan of every backend.
            out: also write the results as JSON to this file.
            cuda_graphs: on CUDA, also time inference replayed from captured CUDA graphs
                (vmunet_monai.cuda_graphs.GraphedInference).
            store_activations: on CUDA, also time training with SS2D recomputation off (every
                activation stored), the rows marked +store_all.
            channels_last_scan: run our SS2D layers on channels-last maps (SS2D.channels_last_scan).
            fused_norm_gate: fused Triton LayerNorm * SiLU gate in our SS2D layers (SS2D.fused_norm_gate).
            fused_dt_proj: step-size projection inside the triton scan kernels (SS2D.fused_dt_proj).
            compile: also time each model under torch.compile (inductor; the scans stay one custom
                operator each), the rows marked +compile; compilation happens in the warm-up.
            baselines: comma-separated MONAI networks timed on the same inputs: unet (BasicUNet with the
                original U-Net's widths, 64-1024) and/or swin_unetr (SwinUNETR, 2D, feature size 48).
            deterministic: also time each model under torch.use_deterministic_algorithms(True), as
                bundles' --determinism true trains (the triton kernels without atomics, the cpu kernel
                on one thread), the rows marked +deterministic.
            kernel_config: KernelConfig fields for the triton kernels during the run, e.g. "bwd_stepwise=true"
                (the step-loop backward) or "segments=0" (integers, true/false); printed and recorded in --out.
            variants: more configurations of our networks timed in the same run, beside the plain rows and the
                official model, separated by semicolons, each an optional label and a colon, then items separated
                by commas, an item being an SS2D option (channels_last_scan, fused_norm_gate, fused_dt_proj) or a
                KernelConfig field as NAME=VALUE, or "fast" (the three SS2D options on), for example
                "fast;fast,bwd_stepwise=true" (without a label a variant's text labels it); rows marked
                BACKEND[LABEL] (latency, throughput and memory, and with --cuda_graphs BACKEND[LABEL]+graphs;
                no +compile, +deterministic or +store_all rows). A variant is left out on a backend where it
                changes nothing (KernelConfig fields act on triton only) or the same as one before it; one that
                fails is recorded with its error, and the run goes on.
        """
        from vmunet_monai.benchmark import run_benchmark

        run_benchmark(device=device, networks=networks, size=size, batch=batch, repeats=repeats,
                      backends=backends, reference=reference, scan_only=scan_only, out=out,
                      cuda_graphs=cuda_graphs, store_activations=store_activations,
                      channels_last_scan=channels_last_scan, fused_norm_gate=fused_norm_gate,
                      fused_dt_proj=fused_dt_proj, compile=compile, baselines=baselines,
                      deterministic=deterministic, kernel_config=kernel_config, variants=variants)

    def kernels(self, arch: str = "sm_90", cases: str = "all", batch: int = 32, sms: int | None = None,
                out: str | None = None, config: str = "", dump: str | None = None):
        """Compile the triton backend's kernels for a GPU architecture on this machine (no GPU needed) and
        report, per kernel, registers, spilled bytes, shared memory, how its launch fills the card, its
        atomic instructions, and what one iteration of its main loop does in machine code.

        The kernels are those that real SS2D layers at VM-UNet's stage 1 (256x256 input) launch in a
        forward and backward pass, in every precision and option; Triton's bundled ptxas compiles them.

        Args:
            arch: sm_80 (A100), sm_86 (A40), sm_89 (L40S), sm_90 (H100, H200) or sm_100 (B200).
            cases: comma-separated subset of ss2d, ss2d_bf16, ss2d_fp16, ss2d_fast, ss2d_fast_fp32, ss2d_recompute_states,
                ss2d_per_direction, ss2d_segments, ss2d_chunked, selective_scan, ss2d_deterministic, ss2d_bwd_steps,
                ss2d_fast_bwd_steps (the fast options with the step-loop backward in 4 segments); or all.
            batch: batch size of the launches (it sets the grids, not the compiled code).
            sms: SM count of the card (default: that of the card named for the architecture).
            out: also write the rows as JSON to this file.
            config: KernelConfig fields under every case's own, e.g. "bwd_block_d=4,bwd_num_warps=4" (integers,
                true/false): what other tile sizes compile to.
            dump: also write each kernel's Triton IR (.ttir, and .ttgir with the register layouts Triton
                chose), LLVM IR, PTX and machine code (.sass) into this folder.
        """
        from vmunet_monai.ops.triton_aot import run

        try:
            run(arch=arch, cases=cases, batch=batch, sms=sms, out=out, config=config, dump=dump)
        except (ValueError, RuntimeError) as exc:
            raise SystemExit(f"error: {exc}") from exc

    def demo(self, out: str = "demo_run", epochs: int | None = None, num: int | None = None, size: int | None = None,
             baseline: str = "", classes: int = 1, glands: bool = False, acdc: bool = False, folds: int = 0,
             determinism: bool = True):
        """The main job on embedded defaults: synthetic ISIC-layout data -> prepare -> train -> validation Dice.

        Args:
            out: working folder (demo data, prepared datalist, bundle copy with the trained model): new, empty or
                an earlier demo's, whose folders a later demo replaces; a folder holding anything else is refused.
            epochs: training epochs (default 30; 60 with --classes 2, 80 with --glands, 30 of 10 iterations with
                --acdc).
            num: number of synthetic images (default 48), or of patients with --acdc (default 16).
            size: network input size used by the demo (default 64, 128 with --glands, 96 with --acdc; the bundle
                default stays the paper's 256).
            baseline: also train MONAI's unet (BasicUNet) or swin_unetr (SwinUNETR, needs einops) the same way,
                through the bundle's configs/baseline_NAME.json, and compare the two case by case on the test
                images (vmunet_monai compare; table printed, eval/compare/compare.png written).
            classes: 2 trains on lesions with a dark core (two classes, your-own-data folders layout): one
                softmax output per class, and each class's test Dice printed.
            glands: synthetic GlaS tiles instead: trained on binary masks, then the test tiles predicted and scored
                object by object (the objects command) against their numbered glands, beside pixel Dice, also with
                touching glands split at the depth tune_split finds best on the training tiles.
            acdc: synthetic cine MRI in ACDC's patient folders instead: synapse_multiorgan trained on RV, MYO and
                LV, the test frames evaluated with ED and ES apart and each patient's clinical indices (ejection
                fractions, volumes, myocardial mass) against the ground truth, and the testing folder predicted.
            folds: a K-fold cross-validation (K at least 2) instead of one run: each fold trained, evaluated on the
                images it held out and on the test split; the out-of-fold evaluations compared as one; the test
                images predicted by each fold's model and by the folds as one ensemble, scored and compared.
            determinism: train in the bundles' deterministic mode (on by default), so that a second run on the same
                machine repeats the first one's weights and numbers exactly; --nodeterminism trains as the
                bundles do by default (seeded, the numbers vary a little between runs).
        """
        from vmunet_monai.demo import run_demo

        run_demo(out=out, epochs=epochs, num=num, size=size, baseline=baseline, classes=classes, glands=glands,
                 acdc=acdc, folds=folds, determinism=determinism)

    def compare(self, *runs, labels: str = "", metric: str = "dice", out: str | None = None, seed: int = 0):
        """Compare models evaluated on the same test cases, each against the first, case by case.

        Each RUN is an evaluation's output folder (or its per-case CSV), e.g. eval and eval/baseline_unet of a
        bundle evaluated with and without a baseline overlay; several joined by commas are runs of one model
        (seeds), compared through each case's mean over them, or, when they share no case, the folds of a
        cross-validation (each fold's evaluation of the cases it held out). Prints mean and sd over cases (and
        over runs), then per model the mean paired difference to the first with a bootstrap 95% interval, the Wilcoxon
        signed-rank p-value and the cases it is better, the same or worse on; per test set where there are
        several (polyp) and per organ (Synapse). Where the evaluations wrote their calibration beside their
        tables (evaluate_native.json of the 2D bundles, evaluate.json of synapse_multiorgan, score on probability
        maps), also each model's ECE, Brier score and errors AUROC (how well its least sure pixels find its
        errors), mean and sd over its runs. Notes runs evaluated in different environments, and 2D tables that
        scored the same images at different sizes (eval at the network's input, eval/native and score at each
        image's own).

        Args:
            runs: evaluation folders or per-case CSVs, one per model; commas join runs of one model.
            labels: names of the models, comma-separated (default the folder names; for runs joined by commas what
                their names share, e.g. fold* for eval/fold0,eval/fold1).
            metric: dice or iou (2D bundles; with several classes the mean over classes, dice_present the mean
                over the classes present in each image, and dice_<class> one class); dice, hd95 or transunet_dice
                (Synapse, mean over organs); object_dice, f1 or object_hausdorff (tables of the objects command);
                or any column of the tables, such as dice_liver.
            out: folder to write compare.json and compare.png (box plots and sorted paired differences).
            seed: seed of the bootstrap resampling.
        """
        from vmunet_monai.evaluation.compare import run_compare

        run_compare(runs, labels=labels, metric=metric, out=out, seed=seed)

    def objects(self, pred: str, truth: str, out: str | None = None, group_by: str = "folder",
                pictures: bool = True, distances: bool = True, title: str = "", foreground: str | int | None = None):
        """Score predicted 2D masks object by object against ground truths that number each object (GlaS glands,
        cells): object F1, object Dice and object Hausdorff as the GlaS challenge defines them, beside pixel Dice.

        A predicted object is a true positive when it covers at least half of the ground-truth object it overlaps
        most. Object Dice and Hausdorff weigh each object of either side by its area against the object of the
        other side it overlaps most, so merged or split objects cost what pixel Dice hides. Masks of two values
        are split into 8-connected objects; masks of more values hold one object per value. Prints pooled and
        per-image scores per set, and writes objects_per_image.csv (which compare reads), objects_summary.json,
        objects.png and, per image, a picture: ground-truth objects filled green when found and blue when missed,
        predicted objects outlined dark green when right and red when not.

        Args:
            pred: predicted masks: a folder (predict's OUTPUT/masks, <image>_mask.png, or OUTPUT/instances, the
                objects predict --split_touching numbered) or one file; binary masks or object maps (class maps
                with --foreground).
            truth: ground-truth masks by image name (<image>.png, <image>_anno.bmp, <image>_mask.png), or a
                folder of images with their masks beside them (GlaS).
            out: output folder (default: objects/ beside PRED where PRED is predict's masks/ or instances/, else
                PRED_objects/ beside PRED).
            group_by: how cases form sets: folder (the ground truth's folder) or prefix (the name up to its first
                _, GlaS's testA and testB).
            pictures: write one picture per image.
            distances: also the object Hausdorff distance (in pixels; one distance map per object, the slow part).
            title: a title for the table and plot.
            foreground: class maps (predict with several classes): the class whose objects are scored, as its
                value in the masks or its name in predict's prediction.json. Class maps that prediction.json
                records as such are refused without it; other masks of several values are read as instance masks
                (each value one object).
        """
        from vmunet_monai.evaluation.objects import run_objects

        run_objects(pred, truth, out=out, group_by=group_by, pictures=pictures, hausdorff=distances, title=title,
                    foreground=foreground)

    def score(self, pred: str, dataset: str, out: str | None = None, split: str = "test",
              mask_values: tuple | None = None,
              transunet: bool | None = None, montage: bool | None = None, worst: int | None = None):
        """Score segmentations already on disk (predict's, or another tool's) against the labels of a prepared
        dataset, by the protocol of its bundle's own evaluation; the per-case table compare reads beside it.

        Each prediction is paired with a case of the split by name and must be at its image's size (on its
        volume's grid). Volumes (<image>_seg.nii.gz as predict writes them, <case>.nii.gz as nnU-Net does): Dice
        and HD95 in mm per class, the TransUNet rule beside them, each datalist group apart and, for ACDC's
        patients, the clinical indices; per_case.csv, summary.json, organ_boxplot.png and montages. 2D masks
        (<image>_mask.png as predict writes them, or <image>.png): pooled and per-image Dice and IoU per test
        set and class; metrics_<split>_per_image.csv, metrics_<split>_summary.json, metrics_<split>.png and
        metrics_<split>_worst.png (the images of the lowest Dice, ground truth beside prediction). Where predict
        --probabilities left probability maps (binary 2D maps, <image>_prob_K.png of several classes, under PRED
        or in probabilities/ beside its masks/, and <case>_prob.nii.gz beside volumes), also how well calibrated
        they are: ECE, Brier score and a reliability diagram (metrics_<split>_calibration.png, calibration.png
        for volumes), and whether the least sure pixels are the wrong ones (an AUROC, and the share of errors
        among as many least-sure pixels as there are errors); for several classes by the top label.
        Cases without a prediction are left out and files named after no case are not scored; both are named.
        Predictions that predict wrote are refused where their weights' trained_on.json lists images of the
        split (trained or selected on: the datalist was drawn again after the training): a test split's among
        the training and validation images, the validation split's among the training images; the training
        split is scored as asked.

        Args:
            pred: a folder of predictions, searched recursively; predict's OUTPUT (or its masks/): its masks are
                scored and the probability maps beside them calibrated, its overlays and pictures left alone.
            dataset: the folder prepare wrote (its datalist.json names the cases, labels, classes and groups).
            out: output folder (default: score/ beside PRED where PRED is predict's masks/, else PRED_score/ beside
                PRED); the files of an earlier 2D score of the same split there are replaced.
            split: the datalist split to score against: test, validation or training.
            mask_values: 2D masks of several classes: the value each class holds in them, background first;
                without it, the values predict's prediction.json records, else the class numbers.
            transunet: volumes: also the TransUNet-rule scores, labelled as such (default true).
            montage: volumes: draw the slices of the first case and of the case of the lowest mean Dice, with
                prediction and label (default true).
            worst: 2D masks: how many of the lowest-Dice images metrics_<split>_worst.png draws; 0 draws none
                (default 8).
        """
        from vmunet_monai.evaluation.score import score

        options = {k: v for k, v in (("mask_values", mask_values), ("transunet", transunet), ("montage", montage),
                                     ("worst", worst)) if v is not None}
        score(pred, dataset, out=out, split=split, **options)

    def tune_split(self, pred: str, truth: str, depths: str = "1,1.5,2,3,4,6,8", out: str | None = None,
                   group_by: str = "folder", sets: str | None = None):
        """Choose the depth for predict --split_touching: split predicted binary masks at each depth and score their
        objects against ground truths that number each object; prints the table and the depth to use.

        The depth with the highest object Dice wins (ties: object F1, then the larger depth); where the unsplit
        masks score as well, it says to leave --split_touching out. Tune on images that
        are not your test set (predict the training or validation tiles), so the choice is not fitted to the
        numbers it is judged by. Writes split_depths.csv and split_depths.png.

        Args:
            pred: predict's binary masks (OUTPUT/masks) or one file.
            truth: the numbered ground-truth masks by image name, or images with their masks beside them (GlaS).
            depths: the neck depths to try, in pixels, separated by commas (each at least 0.5).
            out: output folder (default: split_depths/ beside PRED where PRED is predict's masks/ or instances/,
                else PRED_split_depths/ beside PRED).
            group_by: folder or prefix (as objects; the table pools every image).
            sets: only these sets, separated by commas (e.g. --group_by prefix --sets train: GlaS's train_* tiles).
        """
        from vmunet_monai.evaluation.objects import tune_split

        tune_split(pred, truth, depths=depths, out=out, group_by=group_by, sets=sets)

    def prepare(self, bundle: str, raw: str, out: str, **options):
        """Read a dataset as its owners distribute it (RAW) and write OUT/datalist.json for BUNDLE.

        Every image and mask is decoded once (--verify false skips that); unusable files are skipped, named on
        stderr and listed in the datalist, and the rest is imported. OUT may not lie inside the dataset's folders.

        Your own 2D data goes to isic_skin_lesion or polyp_seg as folders (found in RAW or up to two levels
        below): images/ and masks/ (split here), or train/ with optional val/ and test/ (or test/<set>/, each
        set reported apart), each holding images/ and masks/, or images with their masks beside them (X.png and
        X_mask.png; in one folder, or one folder per category as BUSI, each category reported apart; several
        masks of one image are merged; names train_*, testA_*, testB_* as GlaS's are the split). A mask is
        named after its image, with a suffix found by trying "", _mask, _segmentation, _seg, _gt, _label and
        -mask (_anno too, beside the images); of two images with one name (X.jpg beside X.png) only the PNG gets
        the mask, and the other is skipped. Images are read as displayed (a photo's EXIF orientation tag
        applied), so a mask fits the upright picture. Masks are binary, or label maps of several classes named with
        --classes (or in a dataset.json beside the folders): class numbers, grey levels such as 0,128,255 or a
        palette PNG; prepare prints the --num_classes to train with.
        Your own CT or MRI volumes and classes go to synapse_multiorgan as imagesTr/ and labelsTr/ (Decathlon,
        nnU-Net; labelsTs/ for a labelled test set), images/ and labels/, or one folder per patient with each
        label beside its volume (ACDC: training/ and testing/, split by patient; RV, MYO, LV recognised; KiTS:
        case_00000/imaging + segmentation; LiTS: volume-N + segmentation-N side by side) of NIfTI, NRRD or MHA
        files; prepare prints the --num_classes to train, evaluate and predict with (and
        --intensity mri when dataset.json names an MRI modality, for ACDC, or where the volumes hold no air:
        each volume is then scaled by its own percentiles instead of the CT window).

        Options of each bundle (defaults in brackets; an option another bundle has is refused by name):
        - isic_skin_lesion: --split official|paper|auto [auto] (paper: the seeded 7:3 split of the
          VM-UNet paper), --year 2016|2017|2018 (needed when several are present), --val_fraction [0.2],
          --test_fraction [0.3] (of the paper split, or of your folders), --validation auto|carve [auto],
          --seed [0], --verify [true], --layout challenge|folders|ph2|auto [auto: challenge, else PH2's image
          folders, when present; PH2: --split auto puts every image in the test split, paper divides it],
          --mask_suffix (folders; default: found), --classes lesion,core (folders, masks of several classes),
          --mask_values 0,128,255 (folders: background's then each class's mask value; default: found),
          --foreground half|nonzero [half] (folders, binary: nonzero for instance masks numbering each object)
        - polyp_seg: --val_fraction [0.1] (carved from TrainDataset), --seed [0], --verify [true],
          --layout pranet|folders|auto [auto: pranet when present], --test_fraction [0.2] (folders without
          test/), --mask_suffix (folders; default: found), --classes, --mask_values, --foreground (folders, as
          for ISIC)
        - synapse_multiorgan: --num_val [one in six training cases: 3 of Synapse's 18; patients in patient
          folders], --seed [0], --spacing x,y,z (mm, for the TransUNet release, which carries none;
          default 0.76,0.76,3.0),
          --verify [true], --layout btcv|folders|auto [auto: BTCV when present], --classes liver,tumour
          (folders; default: dataset.json), --test_fraction [0.2] (folders without labelsTs/ or testing/),
          --split auto|mamba_unet [auto] (ACDC: Mamba-UNet's 70/10/20 split of the training patients),
          --intensity auto|ct|mri|minmax [auto] (folders: mri where dataset.json names MRI, for ACDC and
          for volumes without air, which are not CT in Hounsfield units; else ct), --channel (folders: the one
          channel read of a case with several: nnU-Net's number or its dataset.json name [0], or the name
          ending the volumes that share one label, BraTS's flair of X_t1, X_t2, X_flair beside X_seg)

        Args:
            bundle: isic_skin_lesion, polyp_seg or synapse_multiorgan.
            raw: the dataset as downloaded (a folder, one archive, or a folder of .zip or .tar archives, which are
                unpacked into OUT/unpacked), or your folders of images and masks (or a folder above).
            out: output folder for datalist.json (and converted files where the bundle needs them).
        """
        from vmunet_monai.data import prepare

        with _option_errors("prepare", bundle):
            prepare(bundle, raw, out, **options)

    def demo_data(self, bundle: str, out: str, num: int | None = None, seed: int = 0, **options):
        """Write a small synthetic dataset for BUNDLE in the real dataset's raw layout under OUT.

        --layout folders writes it instead as your own data may come (what prepare reads for it): images/ and
        masks/ (ISIC), train/ with test/centre_A and test/centre_B (polyp), or imagesTr/ and labelsTr/ with
        three classes of its own named in dataset.json (Synapse). --layout glands (polyp_seg) writes GlaS's one
        folder of histology tiles with numbered glands beside them (train_*, testA_*, testB_* with _anno.bmp);
        --layout acdc (synapse_multiorgan) writes cine MRI as ACDC ships it (training/ and testing/ patient
        folders with Info.cfg, a 4D series and two labelled frames each).

        Options of each bundle (defaults in brackets):
        - isic_skin_lesion: --year 2016|2017|2018 [2017] (the challenge's folder naming), --layout
          challenge|folders|ph2 [challenge] (ph2: PH2's per-image folders and clinical table), --classes 1|2 [1]
          (folders: 2 adds a dark core to each lesion, a second class)
        - polyp_seg: --layout pranet|folders|glands [pranet]
        - synapse_multiorgan: --shape "[x,y,z]" [384,384,48; acdc 128,128,10] (voxels per volume, each at least
          8; acdc 4), --spacing "[x,y,z]" (mm; default: drawn per case, as in the real scans; acdc 1.5,1.5,10),
          --layout rawdata|folders|acdc [rawdata]

        Args:
            bundle: isic_skin_lesion, polyp_seg or synapse_multiorgan.
            out: output folder, new or empty (the RAW argument of prepare).
            num: how many images or volumes (default 48 images, 8 volumes): the training images (ISIC's
                challenge layout, PraNet's, polyp folders and glands; the test sets scale with it), every
                image (ISIC folders, PH2) or every case (Synapse, training and test; ACDC; 4 to 30 cases).
            seed: random seed (the same seed writes the same files).
        """
        from vmunet_monai.data import demo_data

        with _option_errors("demo_data", bundle):
            demo_data(bundle, out, num=num, seed=seed, **options)

    def predict(self, bundle: str, input: str, output: str, checkpoint: str | None = None, device: str | None = None,
                baseline: str = "", tta: bool = False, model: str | None = None, num_classes: int | None = None,
                window: tuple | None = None, intensity: str | None = None, mask_values: tuple | None = None,
                split_touching: float | None = None, probabilities: bool = False, resume: bool = False,
                batch_size: int = 1, uncertainty: bool = False, rank_by: str = "share"):
        """Segment a file or a folder with BUNDLE's network and write masks (and overlays) to OUTPUT.

        Unusable files (empty, truncated, not an image, the wrong dimensionality, NaN values) are skipped and
        named on stderr, as is a file whose output another input already takes (X.tif beside X.png); the exit
        status is non-zero only if nothing could be segmented. Images are read as displayed (a photo's EXIF
        orientation tag applied), and so are their masks written. OUTPUT may not be an input or lie inside the
        input folder.

        Args:
            bundle: a bundle name (isic_skin_lesion, polyp_seg, synapse_multiorgan) or a bundle folder (as the
                one demo trains).
            input: an image or volume file, or a folder searched recursively (mask folders, and masks beside
                their images such as X_mask.png or X_anno.bmp, are skipped).
            output: output folder: masks/ and overlays/ (2D); segmentation volumes, volumes.csv and montages/ (a
                picture of each volume's segmented slices) (Synapse).
            checkpoint: weights to use (default <bundle>/models/model.pt); several joined by commas (the runs of
                several seeds or folds) are run as an ensemble that averages their class probabilities.
            device: cpu, cuda or cuda:N (default CUDA when available).
            baseline: segment with a baseline trained through the bundle's configs/baseline_NAME.json (unet or
                swin_unetr) instead of its own network; default weights models/baseline_NAME/model.pt.
            tta: average the prediction over the image and its vertical, horizontal and double mirror images
                (test-time augmentation, four network passes).
            model: an exported network (.ts, .onnx or .pt2, as the export command writes) to run instead of the
                bundle's network and weights; the rest of the bundle's inference stays the same. The class count and
                image scaling its weights were trained with are read from the config a .ts or .pt2 export carries.
            num_classes: a bundle trained on your own classes: the --num_classes it was trained with (prepare
                prints it; by default the count the network.json beside the weights records, or the export's
                with --model, else 9 for synapse_multiorgan, 2 for the 2D bundles). 2D masks of several classes
                hold the class numbers 0, 1, 2, ... (or --mask_values) and the overlays colour each class.
            mask_values: 2D bundles: the value each class gets in the written masks, background first, e.g.
                0,127,255 to match the dataset's own masks (prepare records them as meta.mask_values in the
                datalist; the copy demo --classes 2 leaves already writes them); default 0,255 for two classes.
            split_touching: 2D binary bundles: also write OUTPUT/instances/<image>_instances.png, the mask's objects
                numbered 1, 2, ... with touching ones cut apart where they narrow by at least this many pixels (2 to 5
                for objects some tens of pixels across); the objects command scores them.
            probabilities: also write the probabilities; 2D binary bundles write OUTPUT/probabilities/<image>_prob.png,
                the foreground probability at the image's size as grey levels 0-255 (as the PraNet lineage saves its
                predictions; score reads them by that protocol too), with several classes <image>_prob_K.png per
                class after the background; synapse_multiorgan writes
                OUTPUT/<case>_prob.nii.gz, one map per class on the segmentation's grid (8 bits, scale 1/255).
            uncertainty: also show where the model is unsure (the entropy of the class probabilities, averaged
                over --tta passes and ensemble members, from 0 to 1; implies --probabilities). 2D images get
                OUTPUT/uncertainty/<image>_uncertainty.png (the image with the uncertainty in warm colours and the
                mask's outline) and OUTPUT/uncertainty_most.png, volumes OUTPUT/<case>_uncertainty.nii.gz and
                a montage; OUTPUT/uncertainty.csv ranks the predictions, the most doubtful first, for review. With
                --tta or an ensemble, also where the passes disagree, the part more training data removes (pictures
                <image>_disagreement.png and disagreement_most.png, volumes <case>_disagreement.nii.gz, and the
                mean_disagreement column).
            rank_by: with --uncertainty, the column of uncertainty.csv that puts a prediction first; share (the
                default, the share of the segmented pixels in doubt), uncertainty (the mean uncertainty) or
                disagreement (the mean disagreement of the passes, with --tta or an ensemble; what to label next).
            batch_size: 2D bundles: images per network call (each is resized to the network's input first); more
                keeps a GPU busy and leaves the masks as they are (volumes go one at a time).
            resume: go on with a run into OUTPUT that stopped (a crash, a closed terminal); what it wrote and reads back
                whole is kept and only the rest is segmented, if its prediction.json names the same weights and options.
            window: synapse_multiorgan trained with another --hu_window: that "[low,high]" in HU (default
                [-125,275]).
            intensity: synapse_multiorgan trained on MRI: mri (--intensity mri: each volume's 0.5-99.5 percentiles)
                or minmax (each volume's minimum and maximum); default ct.
        """
        from vmunet_monai.predict import predict

        predict(bundle, input, output, checkpoint=checkpoint, device=device, baseline=baseline, tta=tta, model=model,
                num_classes=num_classes, window=window, intensity=intensity, mask_values=mask_values,
                split_touching=split_touching, probabilities=probabilities, resume=resume, batch_size=batch_size,
                uncertainty=uncertainty, rank_by=rank_by)

    def export(self, bundle: str, format: str = "torchscript", checkpoint: str | None = None,
               output: str | None = None, tolerance: float = 1e-4, num_classes: int | None = None):
        """Export BUNDLE's network to TorchScript, ONNX or torch.export and check it against eager PyTorch.

        TorchScript and ONNX are traced on the torch scan backend (via monai.bundle ckpt_export /
        onnx_export with use_trace); pt2 is a torch.export program in which each scan is one
        vmunet_monai operator (import vmunet_monai before torch.export.load; it runs the fast backend of
        the machine that loads it). All are made for the network input size in metadata.json; the batch
        size stays free. Prints the max abs difference to the eager network on a random input and exits
        with an error if it exceeds TOLERANCE.

        Args:
            bundle: bundle name (isic_skin_lesion, polyp_seg, synapse_multiorgan) or bundle folder.
            format: torchscript (writes models/model.ts), onnx (models/model.onnx; needs onnx and onnxruntime,
                pip install 'vmunet-monai[export]') or pt2 (models/model.pt2).
            checkpoint: weights to export (default <bundle>/models/model.pt).
            output: file to write instead of the default (a folder gets the format's usual file name in it).
            tolerance: largest max abs difference accepted.
            num_classes: classes, background included, of weights trained with --num_classes N (default: the
                count the network.json beside the weights records, else the bundle's).
        """
        from vmunet_monai.export import ExportVerificationError, export

        try:
            result = export(bundle, format=format, checkpoint=checkpoint, output=output, tolerance=tolerance,
                            num_classes=num_classes)
        except ExportVerificationError as exc:
            raise SystemExit(f"export check failed: {exc}") from exc
        print(result.summary())

    def package(self, bundle: str, out: str, checkpoint: str | None = None, url: str = "", export: bool = True):
        """Run the model zoo's offline checks on BUNDLE and write it with its weights as a zip into OUT.

        Checks: folder layout and name, metadata.json against vmunet_monai/resources/bundle_metadata_schema.json
        (version and changelog included), MONAI's bundle properties, weights that load with strict=True,
        verify_net_in_out, and a traced TorchScript export. The zip unpacks to one folder named after the bundle;
        its large_files.yml lists models/model.pt with its sha256.

        Args:
            bundle: bundle name or bundle folder.
            out: zip file to write (*.zip), or a folder for <name>_v<version>.zip.
            checkpoint: weights (default <bundle>/models/model.pt); a CheckpointSaver file is reduced to its model.
            url: where the release will host models/model.pt, an http(s):// or file:// address (written to
                large_files.yml).
            export: run the TorchScript export check (--noexport skips it).
        """
        from vmunet_monai.package import BundleCheckError, package

        try:
            result = package(bundle, out, checkpoint=checkpoint, url=url, export=export)
        except BundleCheckError as exc:
            raise SystemExit(str(exc)) from exc
        print(result.summary())

    def copy_bundle(self, bundle: str, out: str, checkpoint: str | None = None):
        """Write a copy of BUNDLE set up for trained weights into OUT, from the network.json beside them.

        The class count and names (a training with --num_classes N), the network's settings, the trained input size
        and the 2D bundles' image scale are written into every config that has them and into metadata.json (the
        output's num_channels and channel_def, spatial_shape, the input's value_range); the weights become the
        copy's models/model.pt. export, package, predict and MONAI Label's BundleInferTask then take OUT as the
        bundle with no option to repeat. The copy is checked as package checks (without the export check).

        Args:
            bundle: bundle name or bundle folder.
            out: a new or empty folder, outside the bundle (its name is the copy's bundle name: lowercase
                snake_case for the model zoo).
            checkpoint: the trained weights, with the network.json their training wrote beside them (default
                <bundle>/models/model.pt).
        """
        from vmunet_monai.package import BundleCheckError, copy_for_weights

        try:
            folder, done = copy_for_weights(bundle, out, checkpoint=checkpoint)
        except BundleCheckError as exc:
            raise SystemExit(str(exc)) from exc
        print(f"bundle copy for {checkpoint or 'the bundle weights'} -> {folder}")
        if not any(not line.startswith("model-zoo checks") for line in done):
            print("  nothing to change: the weights were trained with the bundle's settings")
        for line in done:
            print(f"  {line}")
        print(f"use it as the bundle: python -m vmunet_monai predict {folder} IMAGES OUT, package {folder} OUT, or "
              f"MONAI Label's monaibundle app")


@contextlib.contextmanager
def _option_errors(command: str, bundle: str):
    """A bad option value (``ValueError`` from an importer or generator) becomes an ``InputError`` naming the
    command and bundle, which ``main`` prints as one line instead of a traceback."""
    from vmunet_monai.validation import InputError

    try:
        yield
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(f"{command} {bundle}: {exc}") from exc


def _kind(param) -> str | None:
    """``bool``, ``int`` or ``float`` for a command's option of that type (from its annotation, else its default)."""
    annotation = str(param.annotation).replace(" | None", "")
    if annotation in ("bool", "int", "float"):
        return annotation
    default = param.default
    if isinstance(default, bool):
        return "bool"
    return type(default).__name__ if isinstance(default, (int, float)) else None


def _check_arguments(argv: list[str]) -> list[str]:
    """The command line as fire should get it, or an ``InputError`` before anything runs.

    fire runs a command before it reports an option the command does not have (a whole ``predict`` with the
    default weights when ``--checkpoint`` was misspelled), takes ``--tta no`` as a true string and ``--num abc`` as
    text. Here an unknown option is refused with the command's options (and the closest one), an on/off option takes
    true/false, yes/no, on/off or 1/0 in any case, a number option a number; ``--batch-size`` is ``--batch_size``.
    The options of ``prepare`` and ``demo_data`` (each bundle's own) are checked by :mod:`vmunet_monai.data`.
    """
    import difflib
    import inspect

    from vmunet_monai.validation import InputError, read_flag

    if not argv or argv[0].startswith("-"):
        return argv
    command = argv[0]
    commands = [name for name in vars(Commands) if not name.startswith("_") and callable(getattr(Commands, name))]
    if command not in commands:  # fire: "Could not consume arg" and its usage screen
        close = difflib.get_close_matches(command, commands, n=1)
        raise InputError(f"{command!r}: no such command" + (f"; did you mean {close[0]}?" if close else "")
                         + f" (commands: {', '.join(commands)})")
    params = list(inspect.signature(getattr(Commands, command)).parameters.values())[1:]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name: p for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    # the paths given in order: the required arguments, then compare's RUNS
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    positional += [p.name for p in params if p.kind is p.VAR_POSITIONAL]
    out, i, seen, place = [command], 1, set(), 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if arg in ("--", "--help"):
            out.append(arg)
            continue
        if arg.startswith("-") and not arg.startswith("--") and arg not in ("-h", "-"):
            short = arg[1:].partition("=")[0]
            matches = [n for n in named if n.startswith(short)] if short.isalpha() else []
            if len(matches) == 1:  # fire's short option: -o for --out, the one option starting with that letter
                arg = "--" + matches[0] + arg[1 + len(short):]
        if not arg.startswith("--"):
            name = positional[place] if place < len(positional) else ("runs" if "runs" in positional else "")
            place += 1
            out.append(_verbatim(arg) if name in PATH_ARGUMENTS and arg not in ("-h",) else arg)
            continue
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key in seen:  # fire would take the last silently
            raise InputError(f"{command} --{key}: given twice (give each option once)")
        seen.add(key)
        if key not in named and key.startswith("no") and _kind(named.get(key[2:], inspect.Parameter(
                "x", inspect.Parameter.KEYWORD_ONLY))) == "bool":
            out.append(f"--{key}")  # fire's --noflag: the option off
            continue
        if key not in named and not takes_any:
            close = difflib.get_close_matches(key, list(named), n=1)
            raise InputError(f"{command} --{name}: no such option" + (f"; did you mean --{close[0]}?" if close else "")
                             + (f" (options of {command}: {', '.join('--' + n for n in named)})" if named else
                                f" ({command} takes no options)"))
        if not eq and i < len(argv) and not argv[i].startswith("--"):
            value, eq, i = argv[i], "=", i + 1  # fire takes the next word as the value (not a positional path)
        kind = _kind(named[key]) if key in named else None  # (else a bundle's own option of prepare or demo_data)
        if kind == "bool":
            out.append(f"--{key}={read_flag(f'{command} --{key}', value) if eq else True}")
        elif kind in ("int", "float") and eq and value != "None":
            try:
                float(value) if kind == "float" else int(value)
            except ValueError:
                rule = "a number" if kind == "float" else "a whole number"
                raise InputError(f"{command} --{key} {value!r}: must be {rule}") from None
            out.append(f"--{key}={value}")
        elif key in PATH_ARGUMENTS and key in named:
            out.append(f"--{key}={_verbatim(value)}" if eq else f"--{key}")
        else:
            out.append(f"--{key}={value}" if eq else f"--{key}")
    return out


#: arguments that name files or folders: fire would read ``2024`` as a number, ``a,b`` as a tuple and cut ``prep#1``
#: at its ``#`` (a Python comment), so they reach the commands verbatim, a leading ``~`` expanded as a shell would
PATH_ARGUMENTS = {"bundle", "raw", "out", "output", "input", "checkpoint", "model", "pred", "truth", "dataset",
                  "runs", "reference"}


def _verbatim(value: str) -> str:
    """``value`` as a Python string literal, which fire reads back as exactly that text."""
    return repr(os.path.expanduser(value) if value.startswith("~") else value)


_RESUME = {"predict": "; what it wrote is kept, and the same command with --resume keeps it and does the rest"}


def main(argv=None):
    import fire

    from vmunet_monai.validation import InputError, NotWrittenError, os_error_line, write_error_in

    argv = list(argv if argv is not None else sys.argv[1:])
    if argv in (["--help"], ["-h"]):  # fire would describe the class itself; the command list is what helps
        argv = []
    if argv == ["--version"]:
        from vmunet_monai import __version__

        print(f"vmunet_monai {__version__}")
        return
    try:
        fire.Fire(Commands, command=_check_arguments(argv), name="vmunet_monai")
    except (InputError, FileNotFoundError, FloatingPointError) as exc:
        # bad input (file, value, checkpoint, folder): the message names the file, the value and the rule;
        # a traceback would only point into our own checks
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError, NotWrittenError) as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    except ImportError as exc:
        if "pip install" not in str(exc):  # not one of ours, which say what to install: the traceback helps
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001 - only a full disk or a refused file is answered here
        unwritten = write_error_in(exc)
        if unwritten is None:
            raise
        kept = _RESUME.get(argv[0], "") if argv else ""
        print(f"error: {unwritten}{kept}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        command = argv[0] if argv else "the command"
        print(f"\ninterrupted: {command} stopped before it finished{_RESUME.get(command, '')}", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
