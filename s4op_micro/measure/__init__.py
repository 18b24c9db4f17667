"""Measurements of a built firmware beyond its own counter: per-phase instruction profiles and cycle estimates."""
