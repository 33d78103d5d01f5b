"""Inference helpers shared by the detectors (numpy + ONNX Runtime; never torch)."""
