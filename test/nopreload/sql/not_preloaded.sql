-- Without shared_preload_libraries = 'apikeys' the extension installs, but
-- every function refuses with 55000 and a hint saying what to do.
\set SHOW_CONTEXT never
CREATE EXTENSION apikeys CASCADE;
SHOW shared_preload_libraries;

SELECT * FROM apikeys.apikey_create('o', 'n');
SELECT * FROM apikeys.apikey_validate('ak_0123456789ABCDEFGHIJKLMNOPQRSTUV1Wf1r1');
SELECT * FROM apikeys.apikey_list('o');
SELECT apikeys.apikey_revoke('key_x');
SELECT * FROM apikeys.apikey_rotate('key_x');

-- the SQLSTATE is 55000 for each
DO $$
DECLARE
	q text;
BEGIN
	FOREACH q IN ARRAY ARRAY[
		$q$SELECT apikeys.apikey_create('o', 'n')$q$,
		$q$SELECT apikeys.apikey_validate('x')$q$,
		$q$SELECT apikeys.apikey_list('o')$q$,
		$q$SELECT apikeys.apikey_revoke('key_x')$q$,
		$q$SELECT apikeys.apikey_rotate('key_x')$q$]
	LOOP
		BEGIN
			EXECUTE q;
			RAISE NOTICE '%: no error', q;
		EXCEPTION WHEN OTHERS THEN
			RAISE NOTICE '%: %', q, SQLSTATE;
		END;
	END LOOP;
END
$$;

-- dropping works as usual
DROP EXTENSION apikeys;
