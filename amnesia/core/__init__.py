"""Layer 1 — core: the error family, environment settings, StrictModel and config loading, progress lines.

Open to every layer; imports nothing of amnesia's but itself (pydantic, yaml).
"""
