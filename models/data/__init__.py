"""Datasets: readers and writers of the standard formats, and the synthetic video world."""
