"""Inference and deployment: whole-image and sliding-window inference with test-time augmentation,
predicting masks for image files, and export to ONNX and TorchScript."""
