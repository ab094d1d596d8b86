"""Example programs built on accord: the demo pipeline (``accord demo``)."""
