"""segfw: semantic-segmentation experiments configured with Hydra and trained with Lightning."""

__version__ = "0.1.0"
