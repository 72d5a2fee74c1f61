-- The catalog: patient -> study -> series -> instance, plus the transactional outbox.
-- Typed, indexed columns hold the keys every query level needs (PS3.4 C.6 required and unique
-- keys at Patient, Study, Series and Image level); any other return key comes from the
-- instance header stored as DICOM JSON (PS3.18 F.2) without bulk data.

-- Trigram indexes make infix wildcards (*OE^J*) fast; the catalog works without them, so the
-- extension is optional (it needs CREATE privilege on the database; pg_trgm is trusted).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm not installed (%); wildcard matching uses btree only', SQLERRM;
        END;
    END IF;
END
$$;

CREATE TABLE patient (
    pk                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- PatientID + IssuerOfPatientID, or a per-study key when PatientID is empty (records.py).
    identity_key           text NOT NULL UNIQUE,
    patient_id             text NOT NULL DEFAULT '',
    issuer_of_patient_id   text NOT NULL DEFAULT '',
    patient_name           text,
    -- Upper-cased, trailing empty components dropped, '^' kept: the form wildcards match.
    patient_name_norm      text,
    patient_birth_date     date,
    patient_sex            text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patient_patient_id_idx ON patient (patient_id, issuer_of_patient_id);
CREATE INDEX patient_name_norm_idx ON patient (patient_name_norm text_pattern_ops);
CREATE INDEX patient_birth_date_idx ON patient (patient_birth_date);

CREATE TABLE study (
    pk                             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_pk                     bigint NOT NULL REFERENCES patient (pk) ON DELETE CASCADE,
    study_instance_uid             text NOT NULL UNIQUE,
    study_date                     date,
    study_time                     text,
    accession_number               text,
    study_id                       text,
    referring_physician_name       text,
    referring_physician_name_norm  text,
    study_description              text,
    first_received_at              timestamptz NOT NULL,
    -- The study-stability timer (ARCHITECTURE.md "Events"): the database clock when the latest
    -- new or replaced instance was catalogued.
    last_instance_at               timestamptz NOT NULL,
    announced_at                   timestamptz,
    announced_sequence             bigint,
    updated_since_announce         boolean NOT NULL DEFAULT false,
    created_at                     timestamptz NOT NULL DEFAULT now(),
    updated_at                     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX study_patient_pk_idx ON study (patient_pk);
CREATE INDEX study_study_date_idx ON study (study_date);
CREATE INDEX study_accession_number_idx ON study (accession_number);
CREATE INDEX study_study_id_idx ON study (study_id);
CREATE INDEX study_referring_norm_idx ON study (referring_physician_name_norm text_pattern_ops);
-- Studies waiting to be announced (study.arrived) or re-announced (study.updated).
CREATE INDEX study_due_idx ON study (last_instance_at)
    WHERE announced_at IS NULL OR updated_since_announce;

CREATE TABLE series (
    pk                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_pk             bigint NOT NULL REFERENCES study (pk) ON DELETE CASCADE,
    series_instance_uid  text NOT NULL UNIQUE,
    modality             text,
    series_number        integer,
    series_description   text,
    body_part_examined   text,
    series_date          date,
    series_time          text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_study_pk_idx ON series (study_pk);
CREATE INDEX series_modality_idx ON series (modality);
CREATE INDEX series_series_number_idx ON series (series_number);

CREATE TABLE instance (
    pk                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    series_pk            bigint NOT NULL REFERENCES series (pk) ON DELETE CASCADE,
    sop_instance_uid     text NOT NULL UNIQUE,
    sop_class_uid        text NOT NULL,
    instance_number      integer,
    transfer_syntax_uid  text NOT NULL,
    size                 bigint NOT NULL,
    sha256               text NOT NULL,
    object_key           text NOT NULL,
    header               jsonb NOT NULL,
    calling_ae           text NOT NULL,
    received_at          timestamptz NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instance_series_pk_idx ON instance (series_pk);
CREATE INDEX instance_sop_class_uid_idx ON instance (sop_class_uid);
CREATE INDEX instance_instance_number_idx ON instance (instance_number);

-- Catalog-derived events, written in the transaction that causes them; a relay publishes them
-- and sets published_at. sequence is the change-feed position (GET /api/changes?after=N).
CREATE TABLE outbox (
    sequence      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_type    text NOT NULL,
    subject       text,
    payload       jsonb NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished_idx ON outbox (sequence) WHERE published_at IS NULL;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        EXECUTE 'CREATE INDEX IF NOT EXISTS patient_name_norm_trgm_idx '
                'ON patient USING gin (patient_name_norm gin_trgm_ops)';
        EXECUTE 'CREATE INDEX IF NOT EXISTS study_referring_norm_trgm_idx '
                'ON study USING gin (referring_physician_name_norm gin_trgm_ops)';
    END IF;
END
$$;
