"""twistd dropins: ``twistd buildmaster`` and ``twistd slavesim``."""

from twisted.application.service import ServiceMaker

buildmaster = ServiceMaker(
    "buildmaster",
    "buildmaster.tap",
    "The build farm master: queue, scan, dispatch, collect.",
    "buildmaster",
)
slavesim = ServiceMaker(
    "slavesim",
    "slavesim.tap",
    "Simulated builders speaking the launchpad-buildd protocol.",
    "slavesim",
)
