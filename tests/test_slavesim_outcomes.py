"""Outcome rules: matching, deciding and the ``--outcomes`` syntax (pure, plain asserts)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from slavesim import Decision, Outcome, OutcomeRule, RuleSyntaxError, decide, format_rules
from slavesim import parse_rules as parse
from slavesim.outcomes import DEFAULT_DEPENDENCIES


def test_no_rules_means_ok_after_the_default_time() -> None:
    assert decide([[], []], "bob", "hello", 3.0) == Decision(Outcome.OK, 3.0)


def test_first_matching_rule_wins_and_lists_are_searched_in_order() -> None:
    builder_rules = [OutcomeRule(Outcome.PACKAGEFAIL, package="world")]
    farm_rules = [
        OutcomeRule(Outcome.GIVENBACK, package="hel*", duration=1),
        OutcomeRule(Outcome.CHROOTFAIL),
    ]
    assert decide([builder_rules, farm_rules], "bob", "hello", 3.0) == Decision(
        Outcome.GIVENBACK, 1.0
    )
    assert decide([builder_rules, farm_rules], "bob", "world", 3.0) == Decision(
        Outcome.PACKAGEFAIL, 3.0
    )
    assert decide([builder_rules, farm_rules], "bob", "zzz", 3.0).outcome is Outcome.CHROOTFAIL


def test_builder_pattern() -> None:
    rules = [OutcomeRule(Outcome.BUILDERFAIL, builder="frog*")]
    assert decide([rules], "frog-1", "hello", 2).outcome is Outcome.BUILDERFAIL
    assert decide([rules], "bob", "hello", 2).outcome is Outcome.OK


def test_patterns_are_case_sensitive() -> None:
    rules = [OutcomeRule(Outcome.DEPFAIL, package="Hello")]
    assert decide([rules], "bob", "hello", 2).outcome is Outcome.OK


def test_depfail_dependencies() -> None:
    given_deps = [OutcomeRule(Outcome.DEPFAIL, dependencies="libfoo (>= 1.0)")]
    assert decide([given_deps], "b", "p", 1).dependencies == "libfoo (>= 1.0)"
    default = [OutcomeRule(Outcome.DEPFAIL)]
    assert decide([default], "b", "p", 1).dependencies == DEFAULT_DEPENDENCIES


def test_rule_validation() -> None:
    with pytest.raises(ValueError, match="only a DEPFAIL"):
        OutcomeRule(Outcome.OK, dependencies="x")
    with pytest.raises(ValueError, match="duration"):
        OutcomeRule(Outcome.OK, duration=-1)
    with pytest.raises(ValueError, match="duration"):
        OutcomeRule(Outcome.OK, duration=float("nan"))


def test_parse_examples() -> None:
    assert parse("hello*=DEPFAIL:3,*=OK:2") == [
        OutcomeRule(Outcome.DEPFAIL, package="hello*", duration=3.0),
        OutcomeRule(Outcome.OK, package="*", duration=2.0),
    ]
    assert parse(" bob*/*=builderfail , frog/lib[ab]*=GivenBack ") == [
        OutcomeRule(Outcome.BUILDERFAIL, package="*", builder="bob*"),
        OutcomeRule(Outcome.GIVENBACK, package="lib[ab]*", builder="frog"),
    ]
    assert parse("hello=DEPFAIL[libfoo:any (>= 1.0), libbar [amd64]]:0.5") == [
        OutcomeRule(
            Outcome.DEPFAIL,
            package="hello",
            duration=0.5,
            dependencies="libfoo:any (>= 1.0), libbar [amd64]",
        )
    ]
    assert parse("") == []
    assert parse("   ") == []


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("hello", "no '='"),
        ("hello=WHATEVER", "unknown outcome 'WHATEVER'"),
        ("hello=ABORTED", "unknown outcome"),
        ("hello=OK:soon", "'soon' is not a number"),
        ("hello=OK:-1", "duration"),
        ("hello=OK[libfoo]", "only a DEPFAIL"),
        ("=OK", "empty package pattern"),
        ("/hello=OK", "empty builder pattern"),
        ("hello=OK,,*=OK", "empty rule"),
        ("hello=OK,", "empty rule"),
        ("he llo=OK", "contains a space"),
        ("hello=OK:1:2", "cannot read"),
    ],
)
def test_parse_errors_say_what_and_show_the_syntax(text: str, complaint: str) -> None:
    with pytest.raises(RuleSyntaxError) as info:
        parse(text)
    message = str(info.value)
    assert complaint in message
    assert "[BUILDER/]PACKAGE=OUTCOME" in message


_pattern = st.text(alphabet="abcxyz019.+-*?", min_size=1, max_size=8)
_rule = st.builds(
    OutcomeRule,
    outcome=st.sampled_from(list(Outcome)),
    package=_pattern,
    builder=st.none() | _pattern,
    duration=st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False),
).flatmap(
    lambda rule: (
        st.just(rule)
        if rule.outcome is not Outcome.DEPFAIL
        else st.builds(
            OutcomeRule,
            outcome=st.just(rule.outcome),
            package=st.just(rule.package),
            builder=st.just(rule.builder),
            duration=st.just(rule.duration),
            dependencies=st.none() | st.text(alphabet="abc ,()>=:.0123-", max_size=20),
        )
    )
)


@given(st.lists(_rule, max_size=5))
def test_format_then_parse_gives_the_rules_back(rules: list[OutcomeRule]) -> None:
    assert parse(format_rules(rules)) == rules
