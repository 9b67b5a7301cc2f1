"""edge.formats: the one format registry (file-name rule, extension lookup) — torch-free."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.formats import (
    FORMAT_NAMES,
    FORMATS,
    INT8_WEIGHT_BITS,
    PRECISIONS,
    FormatError,
    ModelName,
    format_for_path,
    get_format,
    is_model_file,
    model_filename,
    parse_model_filename,
    with_precision,
)


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_file_name_rule_round_trips(fmt: str, precision: str) -> None:
    name = model_filename("dcam", fmt, precision)
    assert parse_model_filename(Path("models") / name) == ModelName("dcam", fmt, precision)
    assert format_for_path(name) is FORMATS[fmt] and is_model_file(name)


def test_file_names_of_the_export_contract() -> None:
    assert [model_filename("dcam", f, p) for f in FORMAT_NAMES for p in FORMATS[f].precisions] == [
        "dcam.onnx", "dcam.fp16.onnx", "dcam.int8.onnx", "dcam.xml", "dcam.fp16.xml", "dcam.int8.xml",
        "dcam.tflite", "dcam.int8.tflite"]
    assert with_precision("m/dcam.fp16.onnx", "fp32") == Path("m/dcam.onnx")
    assert parse_model_filename("run.v2.int8.TFLITE") == ModelName("run.v2", "tflite", "int8")
    assert parse_model_filename("tiny.onnx").precision == "fp32"
    assert with_precision("m/dcam.int8.xml", "fp32") == Path("m/dcam.xml")
    assert FORMATS["openvino"].files("m/dcam.int8.xml") == (Path("m/dcam.int8.xml"), Path("m/dcam.int8.bin"))
    assert FORMATS["onnx"].files("dcam.onnx") == (Path("dcam.onnx"),)


def test_unknown_names_are_one_line_errors_of_the_callers_type() -> None:
    with pytest.raises(FormatError, match=r"m.pt: unknown model extension '.pt'; expected one of \['.onnx'"):
        format_for_path("m.pt")
    with pytest.raises(KeyError, match="m.pt: unknown model extension"):
        parse_model_filename("m.pt", KeyError)
    with pytest.raises(FormatError, match="format 'coreml': expected one of onnx, openvino, tflite"):
        get_format("coreml")
    assert not is_model_file("dcam.bin")


def test_each_format_names_its_converters_and_options() -> None:
    for fmt in FORMATS.values():
        assert set(fmt.converters) == set(fmt.precisions) and fmt.writer.startswith("export.")
        # A format's own options carry its name; the one record several formats read is shared, not copied.
        assert all(o.field.startswith(fmt.name) and o.flag.startswith(f"--{fmt.name}-") or o is INT8_WEIGHT_BITS
                   for o in fmt.options)
    assert [f.name for f in FORMATS.values() if INT8_WEIGHT_BITS in f.options] == ["onnx", "openvino"]
