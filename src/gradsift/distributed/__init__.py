"""torch.distributed: the process group, sharded extraction, sharded scoring."""
