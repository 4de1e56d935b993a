-- Helpers shared by the regression tests, which run in this order in one
-- database.  They live in schema regress, outside the extension.
CREATE SCHEMA regress;
-- the tests call them under SET ROLE too
GRANT USAGE ON SCHEMA regress TO PUBLIC;

-- outcome(q): runs q and reports 'no error', or its SQLSTATE and message.
CREATE FUNCTION regress.outcome(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END
$$;

-- error_of(stmt, mask): runs stmt and shows the SQLSTATE, message and detail
-- it fails with; the text mask (a random key id) is shown as <id>.
CREATE FUNCTION regress.error_of(stmt text, mask text DEFAULT NULL,
	OUT state text, OUT message text, OUT detail text)
LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	message := 'no error';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE,
		message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
	IF mask IS NOT NULL THEN
		message := replace(message, mask, '<id>');
		detail := replace(detail, mask, '<id>');
	END IF;
	detail := nullif(detail, '');
END
$$;

-- state(q): runs q and reports 'ok' or its SQLSTATE.  Whatever q did is
-- rolled back (a successful q ends in a private SQLSTATE that undoes its
-- subtransaction), so every case starts from the same state.
CREATE FUNCTION regress.state(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RAISE SQLSTATE 'ZZ000';
EXCEPTION
	WHEN SQLSTATE 'ZZ000' THEN
		RETURN 'ok';
	WHEN OTHERS THEN
		RETURN SQLSTATE;
END
$$;
