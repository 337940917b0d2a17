"""RTX 2080 Ti hosts: the reference deployment (two cards, TP=2, 30% of memory)."""

mineru_tensor_parallel_size = 2
mineru_gpu_memory_utilization = 0.3
mineru_max_model_len = 16384
