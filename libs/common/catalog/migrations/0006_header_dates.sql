-- A migration of its own, not part of 0005, which databases had already applied.
-- DA as text ("20200131", ACR-NEMA "2020.01.31") as a date, NULL when it is not one: a header
-- value matched by range that is not a date is no match, never an error for the whole query.
CREATE OR REPLACE FUNCTION edge_parse_da(value text) RETURNS date
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    digits text := replace(btrim(coalesce(value, '')), '.', '');
BEGIN
    IF digits !~ '^[0-9]{8}$' THEN
        RETURN NULL;
    END IF;
    RETURN make_date(substr(digits, 1, 4)::int, substr(digits, 5, 2)::int,
                     substr(digits, 7, 2)::int);
EXCEPTION WHEN others THEN
    RETURN NULL;
END
$$;

