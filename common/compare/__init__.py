"""Comparing runs: a table and pictures from run directories or a sweep (python -m common.compare)."""
