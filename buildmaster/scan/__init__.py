"""The scan of the builders: one worker per builder polls it and acts on what it answers."""

from buildmaster.scan.worker import RESULT_STATES, BuilderWorker, failure_message

__all__ = ["BuilderWorker", "RESULT_STATES", "failure_message"]
