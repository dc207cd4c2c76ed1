"""A binary build's score: the higher, the sooner it is built. Pure; Launchpad's numbers."""

from __future__ import annotations

import attrs

from buildmaster.enums import ArchivePurpose, PackagePublishingPocket, SourcePackageUrgency

__all__ = [
    "ScoreInputs",
    "ScorePart",
    "score_build",
    "score_parts",
    "PRIVATE_ARCHIVE_SCORE_BONUS",
    "COPY_ARCHIVE_SCORE_PENALTY",
    "SCORE_BY_URGENCY",
    "SCORE_BY_POCKET",
    "SCORE_BY_COMPONENT",
]

PRIVATE_ARCHIVE_SCORE_BONUS = 10000
COPY_ARCHIVE_SCORE_PENALTY = 2600

SCORE_BY_URGENCY = {
    SourcePackageUrgency.LOW: 5,
    SourcePackageUrgency.MEDIUM: 10,
    SourcePackageUrgency.HIGH: 15,
    SourcePackageUrgency.EMERGENCY: 20,
}

SCORE_BY_POCKET = {
    PackagePublishingPocket.BACKPORTS: 0,
    PackagePublishingPocket.RELEASE: 1500,
    PackagePublishingPocket.PROPOSED: 3000,
    PackagePublishingPocket.UPDATES: 3000,
    PackagePublishingPocket.SECURITY: 4500,
}

#: Components not listed here (a distribution's own additions) score 0.
SCORE_BY_COMPONENT = {
    "multiverse": 0,
    "universe": 250,
    "restricted": 750,
    "main": 1000,
    "partner": 1250,
}

#: Language packs get none of the per-package bumps: they would otherwise hold up main.
TRANSLATIONS_SECTION = "translations"


@attrs.frozen
class ScoreInputs:
    """Everything the score of one build depends on."""

    archive_purpose: ArchivePurpose
    archive_private: bool
    relative_build_score: int
    urgency: SourcePackageUrgency
    pocket: PackagePublishingPocket
    component: str
    section: str = "misc"


@attrs.frozen
class ScorePart:
    """One term of a score: what it is for, and its points."""

    reason: str
    points: int


def score_parts(inputs: ScoreInputs) -> tuple[ScorePart, ...]:
    """How a build's score is made: the terms :func:`score_build` adds up."""
    parts = []
    if inputs.archive_private:
        parts.append(ScorePart("private archive", PRIVATE_ARCHIVE_SCORE_BONUS))
    if inputs.archive_purpose is ArchivePurpose.COPY:
        parts.append(ScorePart("copy archive", -COPY_ARCHIVE_SCORE_PENALTY))
    if inputs.relative_build_score:
        parts.append(ScorePart("archive's relative build score", inputs.relative_build_score))
    if inputs.section != TRANSLATIONS_SECTION:
        parts.append(
            ScorePart(f"urgency {inputs.urgency.name.lower()}", SCORE_BY_URGENCY[inputs.urgency])
        )
        parts.append(
            ScorePart(f"pocket {inputs.pocket.name.lower()}", SCORE_BY_POCKET[inputs.pocket])
        )
        component = SCORE_BY_COMPONENT.get(inputs.component, 0)
        parts.append(ScorePart(f"component {inputs.component}", component))
    return tuple(parts)


def score_build(inputs: ScoreInputs, manual_score: int | None = None) -> int:
    """The score of a build. A manual score (set by an operator) always wins."""
    if manual_score is not None:
        return manual_score
    return sum(part.points for part in score_parts(inputs))
