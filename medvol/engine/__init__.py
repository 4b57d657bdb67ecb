"""The engine: training (one CPU to many GPUs), checkpoints, tracking, validation."""
