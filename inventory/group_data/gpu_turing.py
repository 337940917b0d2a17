"""RTX 2080 Ti hosts: the reference deployment (two cards, TP=2, 30% of memory)."""

tensor_parallel_size = 2
gpu_memory_utilization = 0.3
max_model_len = 16384
