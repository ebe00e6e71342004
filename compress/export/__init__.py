"""ONNX export, parity checks and onnxruntime timing; import `compress.export.onnx` explicitly.

Kept empty on purpose: importing onnx / onnxruntime costs time and is an optional dependency.
"""
