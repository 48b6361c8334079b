"""Per-sample gradients: layout, computers (closed form, hooks, vmap, loop), projection, extraction."""
