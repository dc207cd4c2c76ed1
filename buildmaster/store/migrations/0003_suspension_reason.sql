-- Why a job is suspended (BuildQueueStatus SUSPENDED, 2), and when it is tried again: a job
-- held up by a failure of the master's own side (its librarian cannot serve a file, it is
-- out of file descriptors, its VM reset command is missing, ...) waits with the reason, and
-- the master puts it back in the queue once resume_after has passed. A job waiting for
-- something else (a chroot) has no resume_after: it comes back when that arrives.
ALTER TABLE buildqueue ADD COLUMN suspended_reason text;
ALTER TABLE buildqueue ADD COLUMN resume_after timestamptz;
ALTER TABLE buildqueue ADD CONSTRAINT buildqueue_suspension_check
    CHECK (status = 2 OR (suspended_reason IS NULL AND resume_after IS NULL));
CREATE INDEX buildqueue_resume_idx ON buildqueue (resume_after)
    WHERE status = 2 AND resume_after IS NOT NULL;
