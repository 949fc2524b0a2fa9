"""Deployment: a trained checkpoint as a predictor (``segfw.load``), masks for image files, and
export to ONNX and TorchScript."""
