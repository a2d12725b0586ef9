"""Evaluation of trained backbones (k-NN, linear probes, reports)."""
