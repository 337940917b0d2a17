"""The sandbox group (`mineru-fleet sandbox up` writes inventory/sandbox.py): CPU hosts serving a
tiny random Qwen2-VL model (mineru_fleet/sandbox/tinymodel.py) that the real modelscope client fetches from the
local ModelScope-compatible HTTPS hub that `sandbox run` starts (mineru_fleet/sandbox/modelhub.py, quickstart.start_hub)."""

from mineru_fleet.sandbox import quickstart as _qs

mineru_profile = "cpu"
mineru_model_id = _qs.HUB_MODEL_ID                       # "mineru-fleet/tiny-qwen2vl"
mineru_model_revision = _qs.HUB_REVISION                 # a tag: pinned
mineru_model_fetch_mode = "controller"
mineru_modelscope_domain = f"127.0.0.1:{_qs.hub_port()}"  # the hub as the controller sees it (18780 by default)
mineru_modelscope_ca_bundle = ".sandbox/hub/certs/ca.pem"
mineru_model_cache_dir = ".sandbox/cache/models"
mineru_max_model_len = 4096
mineru_compile_cache_dir = ".sandbox/cache/compile-cache"  # the seeds of this checkout's sandbox (roles/compilecache.py)
