-- Notifications carry the version written: "<version> <key>" after an insert
-- or update, "0 <key>" after a delete. A replica whose cache was built from
-- that version or a newer one (its own write, echoed back) keeps its cache.
CREATE OR REPLACE FUNCTION custos_records_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('custos_changes', '0 ' || OLD.key);
    ELSE
        PERFORM pg_notify('custos_changes', NEW.version::text || ' ' || NEW.key);
    END IF;
    RETURN NULL;
END
$$;
