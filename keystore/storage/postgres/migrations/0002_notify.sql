-- Every committed insert, update or delete of a record notifies the channel
-- custos_changes with the record's key, so that other replicas can drop
-- what they cached. PostgreSQL delivers notifications only on commit and
-- folds duplicates within one transaction. Keys are at most 512 bytes, far
-- below the 8000-byte payload limit.
CREATE FUNCTION custos_records_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('custos_changes', OLD.key);
    ELSE
        PERFORM pg_notify('custos_changes', NEW.key);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER custos_records_notify
    AFTER INSERT OR UPDATE OR DELETE ON custos_records
    FOR EACH ROW EXECUTE FUNCTION custos_records_notify();
