"""Cython kernels: account table, batch posting, limit counters, id indexes. No I/O."""
