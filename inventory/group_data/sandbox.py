"""The sandbox group (`mineru-fleet sandbox up` writes inventory/sandbox.py): CPU hosts serving a
tiny random Qwen2-VL model (mineru_fleet/sandbox/tinymodel.py) that the real modelscope client fetches from the
local ModelScope-compatible HTTPS hub that `sandbox run` starts (mineru_fleet/sandbox/modelhub.py, quickstart.start_hub)."""

from mineru_fleet.sandbox import quickstart as _qs

profile = "cpu"
model_id = _qs.HUB_MODEL_ID                       # "mineru-fleet/tiny-qwen2vl"
model_revision = _qs.HUB_REVISION                 # a tag: pinned
model_fetch_mode = "controller"
modelscope_domain = f"127.0.0.1:{_qs.hub_port()}"  # the hub as the controller sees it (18780 by default)
modelscope_ca_bundle = ".sandbox/hub/certs/ca.pem"
model_cache_dir = ".sandbox/cache/models"
max_model_len = 4096
