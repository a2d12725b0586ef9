"""DINOv2 pretraining: config, data, meta-architecture driver, loop, checkpoints, launcher."""
