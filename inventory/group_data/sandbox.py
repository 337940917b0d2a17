"""The sandbox group (`mineru-fleet sandbox up` writes inventory/sandbox.py): CPU hosts serving a
tiny random Qwen2-VL model generated on the controller (mineru_fleet/tinymodel.py)."""

profile = "cpu"
model_id = "local/tiny-qwen2vl"
model_revision = "seed0"
model_local_source = ".sandbox/models/tiny-qwen2vl"
max_model_len = 4096
