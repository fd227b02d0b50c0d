"""Results store (Parquet) -> comparison tables, stability taxonomy, calibration, plots, report.

Reads only the Parquet store (never imports trainables or ray). Modules, one job each:
``schema`` (column contract), ``load`` (store -> DataFrames), ``trials`` (per-run metrics),
``compare`` (Tables 3/4), ``stability`` (Table 2), ``calibrate`` (Table 1), ``plots`` (PNG),
``markdown`` (formatting), ``report`` (API: ``analyse``, ``summarize``, ``write_report``,
``to_json``), ``cli`` (``python -m analysis``), ``synthetic`` (a synthetic store for tests and
benchmarks).
"""
