"""Inference modes that map images of any size to logits with any network: whole image, sliding
window, test-time augmentation."""
