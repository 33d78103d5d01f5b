"""Torch code for training and export (imported only by `syntk train` / `syntk export`).

Inference never imports this package; it runs exported ONNX models with ONNX Runtime.
"""
