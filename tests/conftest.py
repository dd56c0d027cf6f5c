"""Shared pytest configuration: quiet TensorFlow, the Keras backend and the hypothesis profiles.

Profiles (choose with ``HYPOTHESIS_PROFILE=<name> pytest``):
    ci  (default): derandomized, so the same examples run every time and CI cannot flake; few examples
        per test by default (the core lift/emit properties ask for more with
        ``tests.helpers.property_settings``), no deadline, no too_slow health check.
    dev: random exploration with many more examples and hypothesis' example database, for local hunting.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=12, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=100, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
