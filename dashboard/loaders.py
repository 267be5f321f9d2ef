"""Reading the outputs folder, one import for the pages: the names of the modules that do it, by job.

    files.py      confined reads (inside the outputs folder, regular files, size limits), cached by version
    discovery.py  prepared data, runs and sweeps found under the outputs folder, and their statuses
    artefacts.py  readers of each artefact: data report, config, history, metrics, predictions, cams, sweeps,
                  evidence, model card, and the pairing of two runs' images
    space.py      the feature space: embedding, stored features, nearest training images

Nothing here imports torch or ray.
"""

from engine.runs import CLASSES, SPLITS

from .artefacts import (
    best_trial,
    cam_path,
    cams_index,
    cams_meta,
    card_files,
    counts_frame,
    data_report,
    evidence,
    faithfulness,
    history,
    load_run,
    localisation_table,
    manifest,
    metrics,
    model_card,
    pair_images,
    param_columns,
    predictions,
    run_config,
    samples,
    split_problem,
    stage_file,
    sweep_info,
    trials,
)
from .discovery import (
    EXPORTS,
    RUN_COMPLETE,
    RUN_CORRUPT,
    RUN_INTERRUPTED,
    RUN_RUNNING,
    RUN_STATUSES,
    RUN_STOPPED,
    SAMPLES,
    RunInfo,
    SweepInfo,
    _scan,
    outputs_summary,
    run_status,
    scan,
)
from .files import (
    MAX_SMALL_BYTES,
    LoadError,
    MissingFile,
    RefusedFile,
    file_in,
    read_csv,
    read_json,
    read_text,
    stamp,
    usable_rows,
)
from .space import embedding, feature_space, similar_cases, training_images

__all__ = [
    "CLASSES", "EXPORTS", "MAX_SMALL_BYTES", "RUN_COMPLETE", "RUN_CORRUPT", "RUN_INTERRUPTED", "RUN_RUNNING",
    "RUN_STATUSES", "RUN_STOPPED", "SAMPLES", "SPLITS", "LoadError", "MissingFile", "RefusedFile", "RunInfo",
    "SweepInfo", "_scan", "best_trial", "cam_path", "cams_index", "cams_meta", "card_files", "counts_frame",
    "data_report", "embedding", "evidence", "faithfulness", "feature_space", "file_in", "history", "load_run",
    "localisation_table", "manifest", "metrics", "model_card", "outputs_summary", "pair_images", "param_columns",
    "predictions", "read_csv", "read_json", "read_text", "run_config", "run_status", "samples", "scan",
    "similar_cases", "split_problem", "stage_file", "stamp", "sweep_info", "training_images", "trials",
    "usable_rows",
]
