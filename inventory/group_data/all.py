"""Inventory variables for every host, with their defaults (see README "Inventory variables").

Uncomment and change what you need; anything not listed in mineru_fleet/core/settings.py is
rejected with the name of the variable and the closest known one.
"""

# profile = "auto"                 # auto | cuda | cpu; cuda stops the deploy on hosts without nvidia-smi
# gpus = None                      # GPU indices to use, e.g. [0, 1]; default: all
# tensor_parallel_size = None      # unset: one server per GPU (best for this 1.2B model)
# gpu_memory_utilization = 0.5     # share of CUDA-visible memory per server, (0, 1]
# max_model_len = None             # vLLM --max-model-len; the multimodal worst case is 18225 tokens
# kv_cache_memory_bytes = None     # vLLM --kv-cache-memory-bytes (instead of the utilization rule)
# max_num_seqs = None              # vLLM --max-num-seqs (vLLM default 256)
# dtype = "auto"                   # auto: bfloat16 on sm_80+, else float16
# vllm_use_v1 = False              # VLLM_USE_V1=0 is the reference deployment; true enables MinerU's logits processor
# enforce_eager = False            # skip CUDA graph capture
# host = "0.0.0.0"                 # vLLM --host
# port = 30000                     # first server's port; server i listens on port + i
# model_id = "OpenDataLab/MinerU2.5-2509-1.2B"
# model_revision = "master"
#                                  # a branch: warning unpinned-model-revision; pin a tag or commit
# model_fetch_mode = "controller"  # controller: fetch once on the controller, copy to hosts; host: each host fetches
# modelscope_domain = None         # MODELSCOPE_DOMAIN (HOST[:PORT]) of a mirror; unset: modelscope.cn
# model_allow_patterns = []        # e.g. ["*.json", "*.safetensors", "*.txt", "*.jinja"]
# model_ignore_patterns = []
# modelscope_token_file = None     # private models: a 0600 file on the controller (or MODELSCOPE_API_TOKEN)
# model_keep_revisions = 2
