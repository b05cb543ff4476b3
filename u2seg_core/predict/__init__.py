"""Prediction with a trained (or released) U2Seg model: per-image writers and the `predict` stage."""
