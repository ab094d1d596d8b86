"""Helpers of the test suite, imported by tests, conftest files, the apps of
tests/apps and bench/ (not tests themselves: pytest collects nothing here).

- :mod:`support.common`: binding an app to a test's store, subprocess
  environments, raw SQL on either backend, ``wait_for``.
- :mod:`support.pgserver`: a throwaway PostgreSQL server from the system's binaries.
- :mod:`support.faultproxy`: a TCP proxy that injects network faults.
- :mod:`support.netns`: network namespaces as hosts; :mod:`support.netharness`:
  the multi-host topology and cluster built on them.
- The chaos harness (RELIABILITY.md §4.1): :mod:`support.recorder` (what the
  tasks ran, the faults), :mod:`support.cluster` (worker processes and their
  faults), :mod:`support.nemesis` (faults at random intervals) and
  :mod:`support.checker` (queue accounting).
"""
