"""A copy detector lvd trains itself (SSCD recipe): config, edit family, model, calibration, run."""
