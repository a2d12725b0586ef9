"""Distillation of a frozen DINOv2 teacher (with its heads) into a smaller student."""
