"""Launchpad's binary build score (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from buildmaster.enums import ArchivePurpose as AP
from buildmaster.enums import PackagePublishingPocket as Pocket
from buildmaster.enums import SourcePackageUrgency as U
from buildmaster.scoring import ScoreInputs, score_build


def inputs(**kw: object) -> ScoreInputs:
    base: dict[str, object] = dict(
        archive_purpose=AP.PRIMARY,
        archive_private=False,
        relative_build_score=0,
        urgency=U.LOW,
        pocket=Pocket.BACKPORTS,
        component="multiverse",
        section="misc",
    )
    base.update(kw)
    return ScoreInputs(**base)  # type: ignore[arg-type]


def test_the_floor_is_low_urgency_in_backports_multiverse() -> None:
    assert score_build(inputs()) == 5


def test_urgency() -> None:
    assert [score_build(inputs(urgency=u)) for u in (U.LOW, U.MEDIUM, U.HIGH, U.EMERGENCY)] == [
        5,
        10,
        15,
        20,
    ]


def test_pocket() -> None:
    pockets = (Pocket.BACKPORTS, Pocket.RELEASE, Pocket.PROPOSED, Pocket.UPDATES, Pocket.SECURITY)
    assert [score_build(inputs(pocket=p)) - 5 for p in pockets] == [0, 1500, 3000, 3000, 4500]


def test_component() -> None:
    components = ("multiverse", "universe", "restricted", "main", "partner")
    assert [score_build(inputs(component=c)) - 5 for c in components] == [0, 250, 750, 1000, 1250]
    assert score_build(inputs(component="contrib")) == 5  # unknown components add nothing


def test_private_archives_jump_the_queue_and_copy_archives_wait() -> None:
    assert score_build(inputs(archive_private=True)) == 10005
    assert score_build(inputs(archive_purpose=AP.COPY)) == 5 - 2600
    assert score_build(inputs(relative_build_score=-100)) == -95


def test_a_typical_security_update_in_main() -> None:
    score = score_build(inputs(urgency=U.HIGH, pocket=Pocket.SECURITY, component="main"))
    assert score == 15 + 4500 + 1000


def test_language_packs_get_no_package_bumps() -> None:
    packs = inputs(
        section="translations", urgency=U.EMERGENCY, pocket=Pocket.SECURITY, component="main"
    )
    assert score_build(packs) == 0
    assert (
        score_build(inputs(section="translations", archive_private=True, relative_build_score=7))
        == 10007
    )


@given(manual=st.integers(-(2**31), 2**31 - 1), private=st.booleans(), urgency=st.sampled_from(U))
def test_a_manual_score_sticks(manual: int, private: bool, urgency: U) -> None:
    assert (
        score_build(inputs(archive_private=private, urgency=urgency), manual_score=manual) == manual
    )
