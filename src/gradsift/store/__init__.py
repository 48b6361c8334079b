"""The on-disk gradient store and the block kernels every scoring path uses."""
