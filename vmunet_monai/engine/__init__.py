"""Shared MONAI training and evaluation pieces for the bundles (transforms, handlers, config helpers).

Bundle configs reference these by dotted path, e.g. ``"_target_": "vmunet_monai.engine.TqdmProgressBar"``
or ``"$vmunet_monai.engine.load_pretrained(@network_def, @pretrained_checkpoint)"``.
"""

from vmunet_monai.engine.curves import TrainingCurves
from vmunet_monai.engine.exported import load_exported
from vmunet_monai.engine.guards import NonFiniteLossError, NonFiniteLossGuard, ValidateInputd, set_determinism
from vmunet_monai.engine.handlers import (
    BinarySegmentationReport,
    CalibrationReport,
    EpochValidation,
    OverlayWriter,
    PraNetReport,
    ProbabilityWriter,
    TqdmProgressBar,
    TrainingCheckpoint,
    TrainingTerminated,
    WeightsLoader,
    item_name,
)
from vmunet_monai.engine.held_out import HeldOutCheck
from vmunet_monai.engine.inferers import (EnsembleInferer, FlipTTAInferer, PlainTensorInferer, checkpoint_list,
                                         ensemble_members)
from vmunet_monai.engine.tracking import TrackingRun, store_uri
from vmunet_monai.engine.transforms import (
    BinarizeMaskd,
    ChannelArgmaxd,
    ClassValuesd,
    FirstOutputd,
    SaveProbabilityVolumed,
    SaveSegmentationd,
    ScaleToUnitd,
    Spacingd,
    SplitPassEntropyd,
    case_name_formatter,
    gray_converter,
    insert_before,
    mask_levels,
    rgb_converter,
)
from vmunet_monai.engine.utils import (
    amp_dtype,
    amp_enabled,
    check_overrides,
    check_launched,
    check_split_for_processes,
    compile_network,
    find_bundle,
    input_size,
    load_pretrained,
    output_channels,
    trained_weights,
)

__all__ = [
    "BinarizeMaskd",
    "BinarySegmentationReport",
    "CalibrationReport",
    "ChannelArgmaxd",
    "ClassValuesd",
    "EnsembleInferer",
    "EpochValidation",
    "FirstOutputd",
    "FlipTTAInferer",
    "HeldOutCheck",
    "NonFiniteLossError",
    "NonFiniteLossGuard",
    "OverlayWriter",
    "PraNetReport",
    "ProbabilityWriter",
    "PlainTensorInferer",
    "SaveProbabilityVolumed",
    "SaveSegmentationd",
    "ScaleToUnitd",
    "Spacingd",
    "SplitPassEntropyd",
    "TqdmProgressBar",
    "TrackingRun",
    "TrainingCheckpoint",
    "TrainingTerminated",
    "TrainingCurves",
    "ValidateInputd",
    "WeightsLoader",
    "amp_dtype",
    "check_overrides",
    "check_launched",
    "check_split_for_processes",
    "amp_enabled",
    "checkpoint_list",
    "compile_network",
    "ensemble_members",
    "case_name_formatter",
    "find_bundle",
    "gray_converter",
    "input_size",
    "insert_before",
    "item_name",
    "load_exported",
    "load_pretrained",
    "mask_levels",
    "output_channels",
    "rgb_converter",
    "set_determinism",
    "store_uri",
    "trained_weights",
]
