"""Export a trained run to one fused, attention-free graph per format (ONNX, OpenVINO IR, TFLite), fp32 and
int8 (distance head kept fp32), each with a manifest: preprocessing, outputs, calibrated thresholds and
export-time accuracy measured through edge.engines.  Entry points: ``dcam-export`` (export.cli:main) and
``export.pipeline.run_export(ExportConfig)``.  Needs the ``export`` extra (torch + converters).
"""
