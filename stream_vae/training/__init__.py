"""Fitting a model on normal windows, packaging it, and the retraining gate."""
