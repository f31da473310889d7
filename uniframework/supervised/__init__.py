"""Supervised stage: train a classifier on the known, labelled split."""
