"""Weights as token sequences: tokenize, standardize, permutation symmetries, baselines."""
