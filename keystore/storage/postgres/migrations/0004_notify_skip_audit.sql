-- The audit log's records (keys under "audit/") are written by every call
-- and cached by nobody: they send no change notifications, so a busy log
-- does not flood every replica's watch.
CREATE OR REPLACE FUNCTION custos_records_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.key NOT LIKE 'audit/%' THEN
            PERFORM pg_notify('custos_changes', '0 ' || OLD.key);
        END IF;
    ELSIF NEW.key NOT LIKE 'audit/%' THEN
        PERFORM pg_notify('custos_changes', NEW.version::text || ' ' || NEW.key);
    END IF;
    RETURN NULL;
END
$$;
