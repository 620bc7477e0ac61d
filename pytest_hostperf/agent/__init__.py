"""The agent: runs inside an environment, measures tests, answers the controller.

Everything under this package is stdlib + pytest (+ pytest-benchmark) only, because it
is shipped into containers, VMs and SSH hosts that have nothing else.
"""
