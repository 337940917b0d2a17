"""Model role (interim): copy a model folder from the controller to the host's model path.

The ModelScope prefetch (pinned revision, verified, resumable, atomic) replaces this source;
the destination layout (<state_dir>/models/<model_id>/<revision>) stays.
"""

from __future__ import annotations

from pathlib import Path

from pyinfra.api import deploy
from pyinfra.operations import files

from mineru_fleet.planner import Plan
from mineru_fleet.settings import Settings


@deploy("Model")
def model(plan: Plan, settings: Settings) -> list:
    """Copy the model files; returns the copy operations (a change means "restart")."""
    src = Path(settings.model_local_source or "")
    if not settings.model_local_source or not (src / "config.json").is_file():
        raise RuntimeError(
            f"model_local_source={settings.model_local_source!r} is not a model folder on the controller "
            "(the ModelScope prefetch is not built yet: set model_local_source)"
        )
    files.directory(name="Model folder", path=plan.model_dir, user="root", group="root", mode="755")
    return [
        files.put(name=f"Model file {f.name}", src=str(f), dest=f"{plan.model_dir}/{f.name}", mode="644")
        for f in sorted(src.iterdir())
        if f.is_file()
    ]
