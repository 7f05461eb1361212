"""Data decomposition: pure partition arithmetic, Cartesian grids with halos, sample sort."""
