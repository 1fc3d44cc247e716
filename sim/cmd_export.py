"""``lbsim export``: offered to ``lbsim`` by its ``cmd_*`` plugin discovery (see cli.py)."""

from marllb.sim.export import register_cli

__all__ = ["register_cli"]
