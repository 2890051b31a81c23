-- Records and the sequence their versions come from. Sequence values are
-- never handed out twice, even by transactions that roll back, so a version
-- is unique across the table and never reused after a delete (no ABA).
-- Keys sort byte-wise: the "C" collation, whatever the database's default.
CREATE SEQUENCE custos_record_version AS bigint MINVALUE 1 NO CYCLE;

CREATE TABLE custos_records (
    key     text COLLATE "C" PRIMARY KEY CHECK (key <> ''),
    value   bytea  NOT NULL,
    version bigint NOT NULL CHECK (version > 0)
);
