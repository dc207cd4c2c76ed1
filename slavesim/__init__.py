"""slavesim: simulated builder daemons speaking launchpad-buildd's protocol ("1.0").

A :class:`Farm` runs many builders in one process, each on its own port, each behaving on
the wire like the real daemon (see docs/protocol.md): ``POST /rpc`` (echo, info, status,
ensurepresent, build, abort, clean), ``GET /filecache/<sha1>`` and
``GET /filecache/buildlog``. Builds are simulated (the log grows with time, results are
small but real .deb/.changes files) and their outcomes scripted by :class:`OutcomeRule`;
each builder has :class:`Faults` switches to misbehave.

As a library, in a test's reactor::

    farm = Farm(reactor, cache_dir=tmp_path, build_time=2.0, clock=clock)  # clock optional
    bob = await farm.start_builder("bob", arch_tags=("i386",))  # port 0: any free port
    bob.url                                     # "http://127.0.0.1:<port>/"
    farm.rules.append(OutcomeRule(Outcome.DEPFAIL, package="hello*", dependencies="libfoo"))
    bob.faults.latency = 0.5                    # see Faults for every switch
    bob.faults.refuse = True; await bob.settled()   # now ECONNREFUSED
    await bob.stop(); await bob.start()         # down and up again, same port, same state
    bob.history[-1]                             # ("build", (build_id, ..., args))
    await farm.stop()                           # no port, connection or timer left

From the command line (see ``twistd slavesim --help``)::

    twistd -n --pidfile= slavesim --count 1000 --port 9000 --arch amd64,i386 \\
        --outcomes 'bob*/*=BUILDERFAIL,hello*=DEPFAIL[libfoo (>= 1.0)]:3,*=OK:2' \\
        --list builders.jsonl

Outcome rules are written ``[BUILDER/]PACKAGE=OUTCOME[[DEPENDENCIES]][:SECONDS]``, comma
separated, first match wins (:mod:`slavesim.outcomes`). Where slavesim knowingly differs
from the real daemon, the difference is documented where it is implemented (e.g.
:meth:`SimulatedBuilder.build`, :class:`AgentFetcher`).
"""

from slavesim.builder import DEFAULT_VERSION, Settings, SimulatedBuilder
from slavesim.cache import AgentFetcher, FetchError, FileCache
from slavesim.farm import BuilderListing, Farm, SimBuilder
from slavesim.faults import Faults, Garbage, Hostile
from slavesim.outcomes import (
    Decision,
    Outcome,
    OutcomeRule,
    RuleSyntaxError,
    decide,
    format_rules,
    parse_rules,
)
from slavesim.web import RecordedCall

__all__ = [
    "DEFAULT_VERSION",
    "AgentFetcher",
    "BuilderListing",
    "Decision",
    "Farm",
    "FetchError",
    "Faults",
    "FileCache",
    "Garbage",
    "Hostile",
    "Outcome",
    "OutcomeRule",
    "RecordedCall",
    "RuleSyntaxError",
    "Settings",
    "SimBuilder",
    "SimulatedBuilder",
    "decide",
    "format_rules",
    "parse_rules",
]
