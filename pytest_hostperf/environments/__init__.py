"""Environment backends: one module per backend, all behind :mod:`.base`."""
