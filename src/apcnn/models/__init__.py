"""Neural network modules of apcnn."""
