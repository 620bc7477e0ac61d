# Sample projects run by environment tests through the agent (mounted as /project);
# they are not part of this repository's own test suite (each has its own conftest/ini).
collect_ignore = ["tiny", "wellkept", "counting"]
