-- Query support (issue 4, PS3.4 C.2.2.2 matching).

-- TM as received ("10", "1010", "101010.25", ACR-NEMA "10:10:10") as a time of day, NULL when it
-- is not a time. IMMUTABLE, so it can feed generated columns and indexes.
CREATE OR REPLACE FUNCTION edge_parse_tm(value text) RETURNS time
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m text[];
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    m := regexp_match(replace(btrim(value), ':', ''),
                      '^([0-9]{2})([0-9]{2})?([0-9]{2})?(\.[0-9]{1,6})?$');
    IF m IS NULL OR m[1]::int > 23 OR coalesce(m[2], '0')::int > 59
       OR coalesce(m[3], '0')::int > 60 THEN
        RETURN NULL;
    END IF;
    RETURN make_time(m[1]::int, coalesce(m[2], '0')::int,
                     least(coalesce(m[3], '0')::numeric + coalesce(('0' || m[4])::numeric, 0),
                           59.999999));
END
$$;

ALTER TABLE study ADD COLUMN study_time_t time GENERATED ALWAYS AS (edge_parse_tm(study_time)) STORED;
ALTER TABLE series ADD COLUMN series_time_t time
    GENERATED ALWAYS AS (edge_parse_tm(series_time)) STORED;

-- Every component group of a PN (alphabetic, ideographic, phonetic) of its first value, each
-- normalised as records.normalise_person_name does (components trimmed, trailing empty ones
-- dropped, upper-cased), empty groups left out, joined by '=': ideographic and phonetic names
-- can be matched too.
CREATE OR REPLACE FUNCTION edge_pn_groups(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    grp text;
    comps text[];
    result text[] := '{}';
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH grp IN ARRAY string_to_array(split_part(value, '\', 1), '=') LOOP
        SELECT array_agg(btrim(c) ORDER BY n) INTO comps
        FROM unnest(string_to_array(grp, '^')) WITH ORDINALITY AS t(c, n);
        WHILE comps IS NOT NULL AND cardinality(comps) > 0 AND comps[cardinality(comps)] = '' LOOP
            comps := comps[1:cardinality(comps) - 1];
        END LOOP;
        IF comps IS NOT NULL AND cardinality(comps) > 0 THEN
            result := result || upper(array_to_string(comps, '^'));
        END IF;
    END LOOP;
    RETURN nullif(array_to_string(result, '='), '');
END
$$;

ALTER TABLE patient ADD COLUMN patient_name_groups text
    GENERATED ALWAYS AS (edge_pn_groups(patient_name)) STORED;
ALTER TABLE study ADD COLUMN referring_physician_name_groups text
    GENERATED ALWAYS AS (edge_pn_groups(referring_physician_name)) STORED;

-- Study-level keys that C-FIND and QIDO filter on most, beyond those of 0001.
CREATE INDEX IF NOT EXISTS study_study_date_time_idx ON study (study_date, study_time_t);
CREATE INDEX IF NOT EXISTS series_study_pk_modality_idx ON series (study_pk, modality);
CREATE INDEX IF NOT EXISTS instance_series_pk_pk_idx ON instance (series_pk, pk);
CREATE INDEX IF NOT EXISTS patient_patient_id_text_idx ON patient (patient_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS study_accession_text_idx ON study (accession_number text_pattern_ops);
