"""Study orchestrator: presets -> validated trial specs -> a scheduler-free Ray Tune run -> Parquet.

    from orchestrator.studies import preset, expand
    plan = expand(preset("demo"))          # list[TrialSpec], validated before Ray starts
    python orchestrator/run_grid.py --preset demo --dry-run

Modules: `studies` (presets, overrides, expansion, validation), `store` (Parquet results store and
ledger), `sink` (the driver-side Tune callback that writes the store), `runner` (Tuner
construction, restore, resources), `cli` (argument parsing), `run_grid` (the command).
"""
