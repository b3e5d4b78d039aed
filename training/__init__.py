"""Synthetic studies, training and evaluation for Lacuna's networks."""
