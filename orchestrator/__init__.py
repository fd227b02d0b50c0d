"""Study orchestrator: presets -> validated trial specs -> a plan -> a scheduler-free Ray Tune run -> Parquet.

    from orchestrator.studies import preset, expand
    specs = expand(preset("demo"))          # list[TrialSpec], each with its TrialConfig, checked before Ray starts
    python orchestrator/run_grid.py --preset demo --dry-run

Modules: `studies` (StudySpec, presets, expansion, validation), `cli` (run_grid's flags, generated from the
typed settings), `runner` (the plan, its repairs, resources, the Tuner), `schedule` (costs, launch order),
`checkpoints` (resume points), `calibration` (self-calibrating studies), `migrate` (trials under older ids),
`store` (the Parquet results store), `sink` (the driver-side Tune callback that writes it), `lock` (one
driver per study), `interrupt` (graceful stops), `run_grid` (the command).
"""
