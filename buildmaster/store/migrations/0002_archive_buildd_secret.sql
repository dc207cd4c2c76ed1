-- A private archive's password for builders (user "buildd"): its web server is configured to
-- accept it, and the master puts it into the archive's URL in the sources.list it sends with
-- build(). URL-safe, so it goes into a URL as it is.
ALTER TABLE archive ADD COLUMN buildd_secret text
    CHECK (buildd_secret ~ '^[A-Za-z0-9_-]{16,}$');
