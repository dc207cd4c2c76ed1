-- A builder's vm_host and name become arguments of the VM reset command: neither may start
-- with '-' (it would be an option) nor hold whitespace or punctuation beyond the few a host
-- name or Launchpad name uses (buildmaster/names.py has the same patterns). The name had
-- its pattern already; it gets a length, and vm_host a pattern. An empty vm_host meant "none"
-- already (the builder's name is used instead): it becomes NULL. Any other value that does
-- not fit stops the migration with the builders to fix, rather than a bare constraint error.
UPDATE builder SET vm_host = NULL WHERE vm_host = '';

DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(format('%s (vm_host %s)', name, coalesce(quote_literal(vm_host), 'NULL')), ', ')
      INTO bad
      FROM builder
     WHERE length(name) > 100
        OR (vm_host IS NOT NULL
            AND (vm_host !~ '^[A-Za-z0-9][A-Za-z0-9._:-]*$' OR length(vm_host) > 253));
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'builders with a name or vm_host that cannot be passed to the VM reset command: %', bad
            USING HINT = 'vm_host: letters, digits, ''.'', ''-'', ''_'' and '':'', starting with a letter or digit, at most 253 characters; names at most 100 characters. Fix them (UPDATE builder SET vm_host = ...) and start the master again.';
    END IF;
END
$$;

ALTER TABLE builder
    ADD CONSTRAINT builder_name_length CHECK (length(name) <= 100),
    ADD CONSTRAINT builder_vm_host_valid
        CHECK (vm_host ~ '^[A-Za-z0-9][A-Za-z0-9._:-]*$' AND length(vm_host) <= 253);
