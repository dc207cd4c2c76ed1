"""Tests run with ``twisted.trial`` (``python -m twisted.trial trial_tests``), not pytest.

They use the master the way another Twisted program or a trial test suite would: through
``buildmaster.testing`` and the public, Deferred-returning API. The pytest suite lives in
``tests/``.
"""
