"""pyinfra config for deploy.py: stop everything when any host cannot be reached or prepared."""

FAIL_PERCENT = 0
