"""The ImageStore contract suite: one set of behaviours, run against every backend."""
