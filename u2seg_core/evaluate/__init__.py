"""Evaluation of pseudo-labels against ground truth."""
