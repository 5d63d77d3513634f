"""The synthetic video world: simulate (world), draw (render), write datasets (export)."""
