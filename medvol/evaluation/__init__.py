"""Scoring a trained run: segmentation, classification and aggregation over runs."""
