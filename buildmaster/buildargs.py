"""What a builder is told to build: the ``build()`` arguments and the sources.list. Pure."""

from __future__ import annotations

from typing import Any

import attrs

from buildmaster.enums import ArchivePurpose, PackagePublishingPocket, SourcePackageFileType
from buildmaster.model import (
    Archive,
    Build,
    DistroArchSeries,
    LibraryFile,
    SourcePackageRelease,
    SourcePackageReleaseFile,
)

__all__ = [
    "ArchiveURLs",
    "BuildContext",
    "CannotBuild",
    "build_args",
    "source_filemap",
    "sources_list",
    "BUILDER_TYPE",
]

BUILDER_TYPE = "binarypackage"

P = PackagePublishingPocket

#: The pockets of the primary archive a build in ``pocket`` may take dependencies from.
POCKET_DEPENDENCIES: dict[PackagePublishingPocket, tuple[PackagePublishingPocket, ...]] = {
    P.RELEASE: (P.RELEASE,),
    P.SECURITY: (P.RELEASE, P.SECURITY),
    P.UPDATES: (P.RELEASE, P.SECURITY, P.UPDATES),
    P.PROPOSED: (P.RELEASE, P.SECURITY, P.UPDATES, P.PROPOSED),
    P.BACKPORTS: (P.RELEASE, P.SECURITY, P.UPDATES, P.BACKPORTS),
}

#: The components a package in a component may build-depend on.
COMPONENT_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "main": ("main",),
    "restricted": ("main", "restricted"),
    "universe": ("main", "universe"),
    "multiverse": ("main", "restricted", "universe", "multiverse"),
    "partner": ("partner",),
}
ALL_COMPONENTS = ("main", "restricted", "universe", "multiverse")
#: What a PPA build sees of its distribution's primary archive.
PPA_PRIMARY_POCKETS = (P.RELEASE, P.SECURITY, P.UPDATES)


class CannotBuild(Exception):
    """The build cannot be dispatched as it stands (the reason is recorded on it)."""


@attrs.frozen
class ArchiveURLs:
    """Where builders fetch archives from; ``{distribution}``, ``{owner}``, ``{name}`` expand.

    A private archive's URL carries its password for builders (``buildd:<secret>@``), as its
    web server expects; a private archive with no secret is sent without one.
    """

    primary: str = "http://archive.ubuntu.com/{distribution}"
    partner: str = "http://archive.canonical.com/{distribution}"
    ppa: str = "http://ppa.launchpadcontent.net/{owner}/{name}/{distribution}"
    private_ppa: str = "https://private-ppa.launchpadcontent.net/{owner}/{name}/{distribution}"

    def for_archive(self, archive: Archive) -> str:
        if archive.purpose is ArchivePurpose.PPA:
            template = self.private_ppa if archive.private else self.ppa
        elif archive.purpose is ArchivePurpose.PARTNER:
            template = self.partner
        else:
            template = self.primary
        url = template.format(
            distribution=archive.distribution_name, owner=archive.owner_name, name=archive.name
        )
        if archive.private and archive.buildd_secret:
            scheme, sep, rest = url.partition("://")
            if sep:
                url = f"{scheme}://buildd:{archive.buildd_secret}@{rest}"
        return url


@attrs.frozen
class BuildContext:
    """Everything a dispatch needs to know about one build, read in one go."""

    build: Build
    sourcepackagerelease: SourcePackageRelease
    distroarchseries: DistroArchSeries
    archive: Archive
    primary_archive: Archive | None
    chroot: LibraryFile | None
    files: tuple[SourcePackageReleaseFile, ...]

    @property
    def suite(self) -> str:
        return self.distroarchseries.series_name + self.build.pocket.suffix


def _line(url: str, suite: str, components: tuple[str, ...]) -> str:
    return f"deb {url} {suite} {' '.join(components)}"


def sources_list(ctx: BuildContext, urls: ArchiveURLs) -> list[str]:
    """The sources.list lines the build may install build dependencies from."""
    series = ctx.distroarchseries.series_name
    archive = ctx.archive
    lines: list[str] = []
    pockets: tuple[PackagePublishingPocket, ...]
    components: tuple[str, ...]
    if archive.purpose is ArchivePurpose.PPA:
        lines.append(_line(urls.for_archive(archive), series, ("main",)))
        pockets, components = PPA_PRIMARY_POCKETS, ALL_COMPONENTS
    else:
        pockets = POCKET_DEPENDENCIES[ctx.build.pocket]
        component = ctx.sourcepackagerelease.component
        components = COMPONENT_DEPENDENCIES.get(component, ALL_COMPONENTS)
        if archive.purpose in (ArchivePurpose.PARTNER, ArchivePurpose.COPY):
            own = ("partner",) if archive.purpose is ArchivePurpose.PARTNER else ALL_COMPONENTS
            lines.append(_line(urls.for_archive(archive), ctx.suite, own))
            components = ALL_COMPONENTS if archive.purpose is ArchivePurpose.COPY else ("main",)
    primary = ctx.primary_archive if archive.purpose is not ArchivePurpose.PRIMARY else archive
    if primary is not None:
        url = urls.for_archive(primary)
        lines.extend(_line(url, series + pocket.suffix, components) for pocket in pockets)
    return lines


def source_filemap(ctx: BuildContext) -> dict[str, str]:
    """``{filename: sha1}`` of the source files; it must hold the ``.dsc``.

    :raises CannotBuild: without a ``.dsc``.
    """
    filemap = {f.file.filename: f.file.sha1 for f in ctx.files}
    has_dsc = any(
        f.filetype is SourcePackageFileType.DSC or f.file.filename.endswith(".dsc")
        for f in ctx.files
    )
    if not has_dsc:
        spr = ctx.sourcepackagerelease
        raise CannotBuild(f"{spr.name} {spr.version} has no .dsc file")
    return filemap


def build_args(
    ctx: BuildContext, urls: ArchiveURLs, virtualized: bool, build_url: str | None = None
) -> dict[str, Any]:
    """The ``args`` of ``build()`` for a binary package build."""
    das = ctx.distroarchseries
    args: dict[str, Any] = {
        "distribution": das.distribution_name,
        "series": das.series_name,
        "suite": ctx.suite,
        "ogrecomponent": ctx.sourcepackagerelease.component,
        "arch_tag": das.architecturetag,
        "archive_purpose": ctx.archive.purpose.name,
        "archives": sources_list(ctx, urls),
        "archive_private": ctx.archive.private,
        "fast_cleanup": virtualized,
        "build_debug_symbols": False,
        "trusted_keys": [],
    }
    if build_url:
        args["build_url"] = build_url
    return args
