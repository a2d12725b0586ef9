"""Labelled and unlabelled image sources shared by training and evaluation."""
