"""buildmaster: a build farm dispatcher for Debian-style package archives."""
