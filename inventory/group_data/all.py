"""Inventory variables for every host: all of them, commented out, with their defaults.

GENERATED from mineru_fleet/core/settings.py (README "Inventory variables" has the same list):
regenerate with `uv run python -m mineru_fleet.core.settings group-data > inventory/group_data/all.py`
(a unit test fails when this file and settings.py differ).

Uncomment and change what you need, here or in group_data/<group>.py or per host. Our variables
start with `mineru_`; keys without the prefix belong to other deploys and are left alone; an
unknown `mineru_*` key stops the deploy with the closest known name.
"""

# auto: cuda when nvidia-smi answers, else cpu. cuda demands GPUs (the deploy stops if none).
# mineru_profile = 'auto'

# GPU indices to use (nvidia-smi numbering); default: all of them.
# mineru_gpus = None

# vLLM -tp. Unset: one server per GPU (data parallel, best for a 1.2B model).
# mineru_tensor_parallel_size = None

# Share of CUDA-visible memory vLLM may use, in (0, 1].
# mineru_gpu_memory_utilization = 0.5

# vLLM --max-model-len; unset: the model's own limit.
# mineru_max_model_len = None

# vLLM --kv-cache-memory-bytes: a fixed KV cache size instead of the utilization rule.
# mineru_kv_cache_memory_bytes = None

# vLLM --max-num-seqs; unset: vLLM's 256.
# mineru_max_num_seqs = None

# auto: bfloat16 when every GPU is sm_80+, else float16.
# mineru_dtype = 'auto'

# VLLM_USE_V1. false (V0) is the reference deployment; CPU hosts always run V1.
# mineru_vllm_use_v1 = False

# vLLM --enforce-eager: skip CUDA graph capture (saves ~0.4 GiB, ~9 s). CUDA hosts only: refused on CPU hosts (vLLM 0.10.2's CPU build exits at start with it).
# mineru_enforce_eager = False

# vLLM --host: address the API listens on.
# mineru_host = '0.0.0.0'

# Networks (CIDR) whose clients may reach the API, e.g. ['10.20.0.0/16']. Set (or mineru_balancers set): the unit gets IPAddressDeny=any plus IPAddressAllow= loopback, the host's own address, these and the balancers. Unset: open to any address (warning api-open).
# mineru_client_networks = []

# Load balancers (IP or CIDR) in front of the servers: allowed like mineru_client_networks.
# mineru_balancers = []

# vLLM --port of the first server; server i listens on port + i.
# mineru_port = 30000

# vLLM --served-model-name; unset: the model id (one name across revisions, so a fleet in the middle of a model rollout answers every client).
# mineru_served_model_name = None

# VLLM_CPU_KVCACHE_SPACE on CPU hosts (GiB of KV cache).
# mineru_cpu_kvcache_space_gib = 1

# Extra mineru-vllm-server arguments, appended as is.
# mineru_extra_args = []

# Extra environment for the server.
# mineru_extra_env = {}

# ModelScope model id.
# mineru_model_id = 'OpenDataLab/MinerU2.5-2509-1.2B'

# Model revision: pin a tag or commit (a branch such as master moves: warning unpinned-model-revision).
# mineru_model_revision = 'master'

# controller: snapshot_download once on the controller, then copy to hosts (hub traffic 1x per fleet); host: every host runs snapshot_download itself.
# mineru_model_fetch_mode = 'controller'

# MODELSCOPE_DOMAIN (HOST[:PORT], https) the controller fetches from; unset: modelscope.cn.
# mineru_modelscope_domain = None

# MODELSCOPE_DOMAIN the hosts use in host mode; unset: mineru_modelscope_domain.
# mineru_modelscope_host_domain = None

# CA file (on the controller) the client trusts for the hub (REQUESTS_CA_BUNDLE); copied to hosts in host mode.
# mineru_modelscope_ca_bundle = None

# File (mode 0600, on the controller) with the ModelScope token for private models; else MODELSCOPE_API_TOKEN from the controller's environment. Never put the token itself in inventory data.
# mineru_modelscope_token_file = None

# Host mode: keep the token on the hosts (/etc/mineru-fleet/private/modelscope-token, 0600) after the download; default: removed right after it.
# mineru_modelscope_keep_token_file = False

# Controller cache: <dir>/<model_id>/<revision> (controller mode).
# mineru_model_cache_dir = '~/.cache/mineru-fleet/models'

# Only files matching these globs (snapshot_download allow_patterns).
# mineru_model_allow_patterns = []

# Skip files matching these globs (snapshot_download ignore_patterns).
# mineru_model_ignore_patterns = []

# Free space a host must keep beyond the model's size, checked before any byte is written.
# mineru_model_free_space_margin_mib = 512

# How each run checks a host's model folder. record: hash only the files whose size, mtime, ctime or inode differ from the verified-files record written when the revision was installed (a no-op run hashes nothing; no record, or a changed file, falls back to hashing); full: hash every file on every run.
# mineru_model_verify = 'record'

# Revision folders kept per model on a host (the current one included).
# mineru_model_keep_revisions = 2

# Python with modelscope on the host (host mode).
# mineru_model_fetch_python = '/opt/mineru-fleet/current/venv/bin/python'

# A model folder on the controller to copy to hosts instead of fetching (no hub: offline tests).
# mineru_model_local_source = None

# Model folder on the host; default /var/lib/mineru-fleet/models/<model_id>/<revision>.
# mineru_model_dir = None

# Share compiled caches within a compile class (release, model revision, graph settings, processor/GPU, CPU count, OS): the first server of a class compiles, its caches go to the controller and to every other host of the class before its server starts. false: every server compiles its own.
# mineru_compile_cache_seed = True

# Controller store of the seeds: <dir>/<class key>/seed.tar.gz.
# mineru_compile_cache_dir = '~/.cache/mineru-fleet/compile-cache'

# Class folders kept per server on a host, the most recently finished first (those the servers' env files and the current deployment record name are always kept): a rollback to the previous class starts warm.
# mineru_compile_cache_keep = 3

# Releases (venvs) live in <install_dir>/releases/<id>.
# mineru_install_dir = '/opt/mineru-fleet'

# Models, caches and state of the service.
# mineru_state_dir = '/var/lib/mineru-fleet'

# System user the server runs as (no login, no root).
# mineru_service_user = 'mineru'

# URL of a wheel directory hosts install from (air-gapped fleets); unset: PyPI.
# mineru_wheel_find_links = None

# Pinned requirements file (on the controller, every pin with --hash) the release is installed from; unset: the project's locks/<profile>.txt. Another lock is another release folder; set it back to roll back.
# mineru_runtime_lock = None

# Balancer hosts: address HAProxy listens on for clients (IP, or :: for all).
# mineru_balancer_bind = '0.0.0.0'

# Balancer hosts: port HAProxy listens on; requests go to every planned server (leastconn).
# mineru_balancer_port = 8000

# Balancer: HAProxy `timeout server`, the longest a server may stay silent on a request (a MinerU page takes seconds to minutes).
# mineru_balancer_server_timeout_s = 600

# Balancer: HAProxy `timeout client` (a client waiting for a long page is silent meanwhile).
# mineru_balancer_client_timeout_s = 600

# Balancer: HAProxy `timeout connect` to a server.
# mineru_balancer_connect_timeout_s = 5

# Balancer: milliseconds between two health checks (GET /health) of a server (`inter`).
# mineru_balancer_check_inter_ms = 2000

# Balancer: failed checks in a row that take a server out (`fall`).
# mineru_balancer_check_fall = 3

# Balancer: good checks in a row that put a server back (`rise`).
# mineru_balancer_check_rise = 2

# Balancer: requests sent to one server at once (`maxconn`; more wait in HAProxy's queue); unset: no limit, vLLM queues them itself.
# mineru_balancer_server_maxconn = None

# Serving hosts: the address the balancers reach this host's servers at (IP or DNS name); unset: the inventory's ssh_hostname, else the host's inventory name.
# mineru_balancer_backend_address = None
