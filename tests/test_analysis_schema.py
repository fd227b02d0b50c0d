"""The analysis reads the store's contract without torch or Ray, and checks physical types."""

from __future__ import annotations

import pyarrow as pa
import pytest

from analysis import schema


@pytest.mark.slow
def test_analysis_does_not_import_torch_or_ray():
    import subprocess
    import sys

    # The analysis may use the torch-free parts of trainables (contracts, policies' signal
    # bookkeeping), never torch, Ray, or matplotlib before a plot is asked for.
    code = (
        "import sys, analysis.report, analysis.cli, analysis.load;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'torchvision', "
        "'matplotlib')];"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"analysis imported {out.stdout.strip()} {out.stderr[-500:]}"


@pytest.mark.parametrize(
    "found, expected, ok",
    [
        (pa.int32(), "int64", True),
        (pa.int64(), "int64", True),
        (pa.float64(), "int64", False),
        (pa.string(), "int64", False),
        (pa.int64(), "float64", True),
        (pa.float32(), "float64", True),
        (pa.string(), "float64", False),
        (pa.large_string(), "string", True),
        (pa.dictionary(pa.int32(), pa.string()), "string", True),
        (pa.int64(), "string", False),
        (pa.bool_(), "bool", True),
        (pa.int8(), "bool", False),
        (pa.null(), "float64", True),
        (pa.null(), "string", True),
    ],
)
def test_is_compatible(found, expected, ok):
    assert schema.is_compatible(found, expected) is ok


def test_is_compatible_rejects_unknown_contract_type():
    with pytest.raises(ValueError, match="unknown contract type 'decimal'"):
        schema.is_compatible(pa.int64(), "decimal")


def test_schema_problems_name_columns():
    cols = (("seed", "int64"), ("arch", "string"), ("lr_gain", "float64"))
    physical = pa.schema([("seed", pa.string()), ("extra", pa.int8())])
    problems = schema.schema_problems(physical, cols, optional=frozenset({"lr_gain"}))
    assert problems == ["column 'seed' has type string, expected int64", "missing column 'arch' (string)"]
    full = pa.schema([("seed", pa.int64()), ("arch", pa.string()), ("lr_gain", pa.null())])
    assert schema.schema_problems(full, cols) == []


def test_arrow_schema_types():
    s = schema.arrow_schema(schema.EPOCH_COLUMNS)
    assert s.field("epoch").type == pa.int64()
    assert s.field("in_cooldown").type == pa.bool_()
    assert s.field("decision").type == pa.string()
    assert len(s) == len(schema.EPOCH_COLUMNS)
