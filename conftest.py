import importlib.util

# rlbook/trl_bridge.py imports TRL (an optional extra): without it, do not collect its doctests
collect_ignore = [] if importlib.util.find_spec("trl") else ["rlbook/trl_bridge.py"]
