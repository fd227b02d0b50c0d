"""Results store (Parquet) -> comparison tables, stability taxonomy, calibration, trajectories, plots, report.

Reads only the Parquet store; never imports torch or Ray (it uses the torch-free contracts and
constants of trainables.records, trainables.paper and the policies' signal bookkeeping). Modules,
one job each: ``schema`` (the contract as the analysis reads it), ``load`` (store -> DataFrames),
``trials`` (per-run metrics), ``compare`` (Tables 3/4), ``stability`` (Table 2), ``calibrate``
(Table 1, per-reading calibration), ``trajectory`` (distance to the paper's batch-size path),
``reconstruction`` (readings ranked), ``plots`` (PNG), ``markdown`` (formatting), ``report`` (API:
``analyse``, ``summarize``, ``write_report``, ``to_json``), ``cli`` (``python -m analysis``).
"""
