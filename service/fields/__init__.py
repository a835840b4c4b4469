"""Fields as results: the schema (``fields`` in the config), typed values read out of labelled
segments, labels bootstrapped from known values, and straight-through thresholds."""
