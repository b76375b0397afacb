"""Test-suite settings: the Hypothesis profiles (``--hypothesis-profile=NAME``)."""

from hypothesis import HealthCheck, settings

# long fuzzing runs of tests/test_fuzz.py: python -m pytest tests/test_fuzz.py
# --hypothesis-profile=fuzz (2,000 mutations per file format)
settings.register_profile(
    "fuzz", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck)
)
