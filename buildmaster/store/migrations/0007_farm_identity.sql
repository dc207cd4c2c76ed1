-- What every master on one database shares besides the catalogue of library files: the
-- farm's identity and the librarian's token secret, so that any master serves and
-- authorises any file (issue 24). One row, made by the first master that starts
-- (buildmaster/librarian/farm.py); a master that still has a librarian.secret in its state
-- directory offers it when the row does not exist yet, so that tokens handed out before the
-- upgrade stay valid.
CREATE TABLE farm (
    -- there is one row
    singleton        boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    -- written into the librarian's files directory (its "farm-id" file): a master given the
    -- files directory of another farm, or an unmarked one while this farm's is marked,
    -- refuses to start
    id               uuid NOT NULL,
    -- the HMAC key of librarian tokens (buildmaster/librarian/tokens.py)
    librarian_secret bytea NOT NULL CHECK (octet_length(librarian_secret) >= 16),
    -- when a files directory was first marked with this farm's id (NULL: none yet)
    files_dir_marked timestamptz,
    created          timestamptz NOT NULL DEFAULT now()
);
