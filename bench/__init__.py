"""`make bench`: the floor, in-process TFRS and Funnel measured in one run on one release (see bench.run)."""
