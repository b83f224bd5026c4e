"""The only layer that wires stages together: the end-to-end run of a study area
(raster or sample table), its manifest and pre-flight checks, the stand-alone
commands, the block and block-wise meta-learning stages and the CLI steps.
Names load on first use (torch only when the meta-learning stage is asked for)."""

from metalsm._lazy import lazy_exports

_API = {
    "AREA_SAMPLE_CELLS": ("metalsm.pipeline._run", "AREA_SAMPLE_CELLS"),
    "area_sample": ("metalsm.pipeline._run", "area_sample"),
    "run_pipeline": ("metalsm.pipeline._run", "run_pipeline"),
    "RunResult": ("metalsm.pipeline._manifest", "RunResult"),
    "build_manifest": ("metalsm.pipeline._manifest", "build_manifest"),
    "collect_warnings": ("metalsm.pipeline._manifest", "collect_warnings"),
    "file_checksums": ("metalsm.pipeline._manifest", "file_checksums"),
    "package_versions": ("metalsm.pipeline._manifest", "package_versions"),
    "check_run": ("metalsm.pipeline._preflight", "check_run"),
    "first_line": ("metalsm.pipeline._preflight", "first_line"),
    "fold_problems": ("metalsm.pipeline._preflight", "fold_problems"),
    "input_files": ("metalsm.pipeline._preflight", "input_files"),
    "output_problems": ("metalsm.pipeline._preflight", "output_problems"),
    "run_credibility": ("metalsm.pipeline._commands", "run_credibility"),
    "run_factor_analysis": ("metalsm.pipeline._commands", "run_factor_analysis"),
    "write_factor_outputs": ("metalsm.pipeline._commands", "write_factor_outputs"),
    "BlockStage": ("metalsm.pipeline._blocks", "BlockStage"),
    "block_statistics": ("metalsm.pipeline._blocks", "block_statistics"),
    "factor_weights": ("metalsm.pipeline._blocks", "factor_weights"),
    "prepare_blocks": ("metalsm.pipeline._blocks", "prepare_blocks"),
    "segment_stack": ("metalsm.pipeline._blocks", "segment_stack"),
    "segment_study_area": ("metalsm.pipeline._blocks", "segment_study_area"),
    "segment_table": ("metalsm.pipeline._blocks", "segment_table"),
    "task_table": ("metalsm.pipeline._blocks", "task_table"),
    "warn_sparse_blocks": ("metalsm.pipeline._blocks", "warn_sparse_blocks"),
    "with_blocks": ("metalsm.pipeline._blocks", "with_blocks"),
    "META_MODEL": ("metalsm.pipeline._meta", "META_MODEL"),
    "METHODS": ("metalsm.pipeline._meta", "METHODS"),
    "MetaResult": ("metalsm.pipeline._meta", "MetaResult"),
    "adapt_all_blocks": ("metalsm.pipeline._meta", "adapt_all_blocks"),
    "adapt_step": ("metalsm.pipeline._meta", "adapt_step"),
    "block_table": ("metalsm.pipeline._meta", "block_table"),
    "fit_intermediate": ("metalsm.pipeline._meta", "fit_intermediate"),
    "kshot_table": ("metalsm.pipeline._meta", "kshot_table"),
    "meta_data": ("metalsm.pipeline._meta", "meta_data"),
    "meta_metrics": ("metalsm.pipeline._meta", "meta_metrics"),
    "metatrain_step": ("metalsm.pipeline._meta", "metatrain_step"),
    "prepare_models_dir": ("metalsm.pipeline._meta", "prepare_models_dir"),
    "prepare_stage": ("metalsm.pipeline._meta", "prepare_stage"),
    "pretrain_step": ("metalsm.pipeline._meta", "pretrain_step"),
    "run_meta_stage": ("metalsm.pipeline._meta", "run_meta_stage"),
    "unlabelled_cells": ("metalsm.pipeline._meta", "unlabelled_cells"),
    "unlabelled_features": ("metalsm.pipeline._meta", "unlabelled_features"),
    "write_blockwise_map": ("metalsm.pipeline._meta", "write_blockwise_map"),
}

__all__ = sorted(_API)
__getattr__, __dir__ = lazy_exports(__name__, _API)
