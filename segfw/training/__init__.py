"""Training: the LightningModule, its losses, metrics and optimization, and the callbacks, loggers,
resume and multi-process machinery around it."""
