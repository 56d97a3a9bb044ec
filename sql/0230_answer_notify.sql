-- Every change of a stored answer is announced on the channel `recsys_answers`, delivered when its
-- transaction commits: the payload is the changed customers' numbers, comma-separated, or `*` (every
-- customer: a statement that changed more than 500, or a TRUNCATE). The API keeps answers in memory
-- and drops a customer's on this signal (service.answer_cache), so what it serves is never older than
-- the table by more than the notification's delivery. Statement-level triggers: one notification
-- per statement, whatever its size.
CREATE OR REPLACE FUNCTION recsys_answers_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    changed text;
BEGIN
    IF TG_OP = 'TRUNCATE' OR TG_NARGS > 0 THEN
        PERFORM pg_notify('recsys_answers', '*');
        RETURN NULL;
    END IF;
    SELECT count(DISTINCT customer_number), string_agg(DISTINCT customer_number::text, ',')
      INTO n, changed
      FROM changed_rows;
    IF n > 500 THEN
        PERFORM pg_notify('recsys_answers', '*');
    ELSIF n > 0 THEN
        PERFORM pg_notify('recsys_answers', changed);
    END IF;
    RETURN NULL;
END
$$;

-- a trigger with a transition table serves one event, so there is one per event and table
DROP TRIGGER IF EXISTS latest_inserted ON latest_recommendations;
CREATE TRIGGER latest_inserted AFTER INSERT ON latest_recommendations
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION recsys_answers_changed();
DROP TRIGGER IF EXISTS latest_updated ON latest_recommendations;
CREATE TRIGGER latest_updated AFTER UPDATE ON latest_recommendations
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION recsys_answers_changed();
DROP TRIGGER IF EXISTS latest_deleted ON latest_recommendations;
CREATE TRIGGER latest_deleted AFTER DELETE ON latest_recommendations
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION recsys_answers_changed();
DROP TRIGGER IF EXISTS latest_truncated ON latest_recommendations;
CREATE TRIGGER latest_truncated AFTER TRUNCATE ON latest_recommendations
    FOR EACH STATEMENT EXECUTE FUNCTION recsys_answers_changed();

-- customer_answers changes when a version is loaded (before it is active), a customer is forgotten or
-- a version is dropped: rarely, and sometimes by 100k rows at once, so no transition table is kept
-- (it would copy every row): any statement on it drops every answer (`*`)
DROP TRIGGER IF EXISTS customer_answers_changed ON customer_answers;
CREATE TRIGGER customer_answers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON customer_answers
    FOR EACH STATEMENT EXECUTE FUNCTION recsys_answers_changed('*');
