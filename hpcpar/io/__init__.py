"""Shared HDF5 output written by every rank, reads on any number of ranks, atomic checkpoints."""
