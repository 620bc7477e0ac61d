# Sample projects run by environment tests through the agent (mounted as /project);
# they are not part of this repository's own test suite.
collect_ignore = ["tiny", "wellkept"]
