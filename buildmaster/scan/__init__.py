"""The scan of the builders: one worker per builder polls it, decides, and carries out.

* :mod:`~buildmaster.scan.worker`: the loop of one builder (:class:`BuilderWorker`): poll,
  decide, carry out (:mod:`~buildmaster.scan.carry`: each step and who carries it out).
* :mod:`~buildmaster.scan.context`: :class:`Farm`, what a worker needs of the master that
  runs it, and the :class:`~buildmaster.scan.context.Scope` its steps take.
* :mod:`~buildmaster.scan.decide`: pure: the builder's answer and the database's view in,
  the steps of the scan out (one table).
* the steps, each taking a :class:`~buildmaster.scan.context.Scope` (the master's services,
  the builder's client, the worker's memory) rather than the master:
  :mod:`~buildmaster.scan.dispatch` (claim, VM reset, files, ``build()``),
  :mod:`~buildmaster.scan.collect` (a finished build: results, final state, clean, next job),
  :mod:`~buildmaster.scan.cancel` (aborts), :mod:`~buildmaster.scan.judge` (the failure
  policy applied: requeue, fail, disable, reset; lost builds, stuck builders),
  :mod:`~buildmaster.scan.probe` (is a builder fit), :mod:`~buildmaster.scan.machine` (VM
  reset, ``abort()``, ``clean()``, the clean status).
* :mod:`~buildmaster.scan.claims`: which kinds have no waiting job, which idle builders wait
  for one, one claim at a time per kind.
"""

from buildmaster.scan.claims import ClaimGate, Openings
from buildmaster.scan.collect import RESULT_STATES
from buildmaster.scan.context import Farm
from buildmaster.scan.judge import failure_message
from buildmaster.scan.worker import BuilderWorker

__all__ = [
    "BuilderWorker",
    "ClaimGate",
    "Farm",
    "Openings",
    "RESULT_STATES",
    "failure_message",
]
