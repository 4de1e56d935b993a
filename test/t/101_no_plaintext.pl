# 101_no_plaintext.pl -- no plaintext key anywhere the extension writes
# (SPEC section 2): not in any table, not in any file of the data directory
# (heap, indexes, TOAST, WAL, the usage dump), not in the server log, not in
# any error message.
#
# The server logs as much as it can: every statement (log_statement = all),
# errors with their statement and full detail (log_error_verbosity =
# verbose), debug messages (debug1 for the server, debug5 for the session
# doing the work), the background worker's passes.  Keys are created,
# validated with every outcome code, rotated, revoked, expired by the
# worker, flushed into usage, and passed by mistake where an id, prefix,
# scope or owner belongs, to make every function fail.
#
# What a client writes into its own statements is the client's business
# (README: send keys as bind parameters): here the keys never appear in a
# statement.  They travel from apikey_create's result into a temporary
# table (never WAL-logged, gone when the session ends) and from there into
# the functions; and as bind parameters from pgbench -M prepared, with
# log_parameter_max_length = 0 as the README advises.  Positive controls show
# that each search would find a key-shaped string that was written.
use strict;
use warnings;

use File::Find;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

my $node = PostgreSQL::Test::Cluster->new('no_plaintext');
$node->init;
$node->append_conf('postgresql.conf', join("\n",
	"shared_preload_libraries = 'apikeys'",
	"max_worker_processes = 16",
	"apikeys.flush_interval = '200ms'",
	"apikeys.expiry_interval = '1s'",
	"log_statement = 'all'",
	"log_min_messages = debug1",
	"log_min_error_statement = error",
	"log_error_verbosity = verbose",
	"log_parameter_max_length = 0",
	"log_parameter_max_length_on_error = 0",
	"log_connections = on",
	""));
$node->start;
my $db = 'postgres';
$node->safe_psql($db, 'CREATE EXTENSION apikeys CASCADE');

# ---------------------------------------------------------------------------
# 1. One session does everything with keys; they live only in pg_temp.plain.
# ---------------------------------------------------------------------------
my $session = <<'SQL';
SET log_min_messages = debug5;
SET client_min_messages = warning;
CREATE TEMP TABLE plain (label text PRIMARY KEY, id text, key text);

-- mint: a restricted key with every argument, and keys to revoke, expire,
-- rotate and forget
INSERT INTO plain SELECT 'main', id, key FROM apikeys.apikey_create('np_owner', 'main',
    scope => 'lists', ip_restrictions => '{10.0.0.0/8}', expires_in_days => 30,
    prefix => 'np_live', metadata => '{"env": "prod"}');
INSERT INTO plain SELECT 'revoked', id, key FROM apikeys.apikey_create('np_owner', 'to revoke');
INSERT INTO plain SELECT 'expired', id, key FROM apikeys.apikey_create('np_owner', 'to expire', expires_in_days => 1);
INSERT INTO plain SELECT 'rotated', id, key FROM apikeys.apikey_create('np_owner', 'to rotate', expires_in_days => 90);
INSERT INTO plain SELECT 'unknown', id, key FROM apikeys.apikey_create('np_owner', 'to forget');
INSERT INTO plain SELECT 'successor', r.id, r.key
  FROM plain AS p, LATERAL apikeys.apikey_rotate(p.id, interval '1 hour', 'np_owner') AS r
 WHERE p.label = 'rotated';
-- near-keys a client might send: one character off, one character short
INSERT INTO plain SELECT 'typo', NULL, overlay(key PLACING CASE WHEN substr(key, 12, 1) = 'A' THEN 'B' ELSE 'A' END FROM 12 FOR 1)
  FROM plain WHERE label = 'main';
INSERT INTO plain SELECT 'truncated', NULL, left(key, -1) FROM plain WHERE label = 'main';

SELECT apikeys.apikey_revoke(id, 'np_owner') FROM plain WHERE label = 'revoked';
UPDATE apikeys.keys AS k SET expires_at = now() - interval '1 second'
  FROM plain AS p WHERE p.label = 'expired' AND k.id = p.id;
DELETE FROM apikeys.keys AS k USING plain AS p WHERE p.label = 'unknown' AND k.id = p.id;

-- the stored digests are pgcrypto's SHA-256 of exactly these keys
SELECT 'DIGESTS', count(*), bool_and(k.digest = public.digest(p.key, 'sha256'))
  FROM plain AS p JOIN apikeys.keys AS k USING (id);

-- validate: every outcome code
SELECT 'CODE', t.label, v.code, t.expected
  FROM (VALUES ('main', 'lists:read', '10.1.2.3'::inet, 'valid'),
               ('main', 'lists:read', '192.0.2.1', 'ip_not_allowed'),
               ('main', 'billing:read', '10.1.2.3', 'insufficient_scope'),
               ('revoked', NULL, NULL, 'revoked'),
               ('expired', NULL, NULL, 'expired'),
               ('unknown', NULL, NULL, 'not_found'),
               ('typo', NULL, NULL, 'malformed'),
               ('truncated', NULL, NULL, 'malformed'),
               ('rotated', NULL, NULL, 'valid'),
               ('successor', 'lists:write', '10.0.0.1', 'valid')) AS t(label, permission, ip, expected)
  JOIN plain AS p USING (label),
  LATERAL apikeys.apikey_validate(p.key, t.permission, t.ip) AS v;
BEGIN READ ONLY;
SELECT 'READONLY', (apikeys.apikey_validate(key, 'lists:read', '10.1.2.3')).code FROM plain WHERE label = 'main';
COMMIT;

-- a key where it does not belong: each call fails; the message, detail,
-- hint and context must not contain the key (parameters keep the key out of
-- the statement text)
CREATE TEMP TABLE errcase (n int, label text, q text);
INSERT INTO errcase VALUES
  (1, 'revoke(key)', 'SELECT apikeys.apikey_revoke($1)'),
  (2, 'revoke(id, owner => key)', 'SELECT apikeys.apikey_revoke($2, $1)'),
  (3, 'rotate(key)', 'SELECT apikeys.apikey_rotate($1)'),
  (4, 'rotate(id, grace 8 days, owner => key)', 'SELECT apikeys.apikey_rotate($2, interval ''8 days'', $1)'),
  (5, 'create(prefix => key)', 'SELECT apikeys.apikey_create(''o'', ''n'', prefix => $1)'),
  (6, 'create(scope => key)', 'SELECT apikeys.apikey_create(''o'', ''n'', scope => $1)'),
  (7, 'create(owner => key, name => blank)', 'SELECT apikeys.apikey_create($1, '' '')'),
  (8, 'create(owner => key, expires_in_days => 0)', 'SELECT apikeys.apikey_create($1, ''n'', expires_in_days => 0)'),
  (9, 'create(name => key and 200 more chars)', 'SELECT apikeys.apikey_create(''o'', $1 || repeat(''x'', 200))'),
  (10, 'usage(owner => key, 0 days)', 'SELECT apikeys.apikey_usage($1, 0)'),
  (11, 'analytics(owner => key, 91 days)', 'SELECT apikeys.apikey_analytics($1, 91)'),
  (12, 'list(owner => key)', 'SELECT count(*) FROM apikeys.apikey_list($1)'),
  (13, 'validate(key, permission => key)', 'SELECT apikeys.apikey_validate($1, $1, ''10.1.2.3'')');
CREATE TEMP TABLE errmsg (n int, label text, key_label text, sqlstate text, text text);
DO $$
DECLARE
	c record;
	p record;
	m text; d text; h text; x text; s text;
BEGIN
	FOR c IN SELECT * FROM errcase ORDER BY n LOOP
		FOR p IN SELECT * FROM plain WHERE label IN ('main', 'revoked', 'typo') LOOP
			BEGIN
				EXECUTE c.q USING p.key, (SELECT id FROM plain WHERE label = 'main');
				s := 'no error'; m := ''; d := ''; h := ''; x := '';
			EXCEPTION WHEN OTHERS THEN
				GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT,
					d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT, x = PG_EXCEPTION_CONTEXT;
			END;
			INSERT INTO errmsg VALUES (c.n, c.label, p.label, s, concat_ws(E'\n', m, d, h, x));
		END LOOP;
	END LOOP;
END
$$;
SELECT 'ERRCASE', e.label, e.key_label, e.sqlstate,
       bool_or(strpos(e.text, k.key) > 0 OR strpos(e.text, substr(k.key, length(k.key) - 37)) > 0)
  FROM errmsg AS e, plain AS k
 GROUP BY e.n, e.label, e.key_label, e.sqlstate ORDER BY e.n, e.key_label;

-- the same calls uncaught, so that their errors reach the server log and
-- this client's stderr
SELECT apikeys.apikey_revoke(key) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_revoke((SELECT id FROM plain WHERE label = 'main'), key) FROM plain WHERE label = 'revoked';
SELECT apikeys.apikey_rotate(key) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_rotate(id, interval '8 days', key) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_create('o', 'n', prefix => key) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_create('o', 'n', scope => key) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_create(key, ' ') FROM plain WHERE label = 'main';
SELECT apikeys.apikey_create(key, 'n', expires_in_days => 0) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_create('o', key || repeat('x', 200)) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_usage(key, 0) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_analytics(key, 91) FROM plain WHERE label = 'main';
SELECT apikeys.apikey_rotate(id) FROM plain WHERE label = 'revoked';

-- the HTTP entry point, when it exists: a key in the header that fails
DO $$
DECLARE
	p record;
	m text; d text; h text; s text;
BEGIN
	IF to_regprocedure('apikeys_api.pre_request()') IS NULL THEN
		RETURN;
	END IF;
	FOR p IN SELECT * FROM plain WHERE label IN ('revoked', 'expired', 'unknown', 'typo') LOOP
		PERFORM set_config('request.headers', json_build_object('x-api-key', p.key)::text, true);
		BEGIN
			PERFORM apikeys_api.pre_request();
			s := 'no error'; m := ''; d := ''; h := '';
		EXCEPTION WHEN OTHERS THEN
			GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT,
				d = PG_EXCEPTION_DETAIL, h = PG_EXCEPTION_HINT;
		END;
		INSERT INTO errmsg VALUES (100, 'pre_request(x-api-key: key)', p.label, s, concat_ws(E'\n', m, d, h));
	END LOOP;
END
$$;
SELECT 'ERRCASE', e.label, e.key_label, e.sqlstate,
       bool_or(strpos(e.text, k.key) > 0 OR strpos(e.text, substr(k.key, length(k.key) - 37)) > 0)
  FROM errmsg AS e, plain AS k WHERE e.n = 100
 GROUP BY e.n, e.label, e.key_label, e.sqlstate ORDER BY e.key_label;

-- usage is counted and flushed by the worker
SELECT 'FLUSHED', apikeys.flush_usage();

-- every table of the extension, whole rows as text: no key, no key body
CREATE TEMP TABLE hits (relname text, nrows bigint, nhits bigint);
DO $$
DECLARE
	r record;
	nrows bigint;
	nhits bigint;
BEGIN
	FOR r IN SELECT c.oid::regclass AS rel, c.relname
	           FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
	          WHERE n.nspname IN ('apikeys', 'apikeys_api') AND c.relkind IN ('r', 'p', 'm')
	          ORDER BY c.relname LOOP
		EXECUTE format('SELECT count(*) FROM %s', r.rel) INTO nrows;
		EXECUTE format('SELECT count(*) FROM %s AS t, pg_temp.plain AS p
		                 WHERE strpos(t::text, p.key) > 0
		                    OR strpos(t::text, substr(p.key, length(p.key) - 37)) > 0', r.rel) INTO nhits;
		INSERT INTO hits VALUES (r.relname, nrows, nhits);
	END LOOP;
END
$$;
SELECT 'TABLE', relname, nrows, nhits FROM hits ORDER BY relname;

-- the keys, for the searches below (this client's output only)
SELECT 'KEY', label, id, key FROM plain ORDER BY label;
SQL

my ($ret, $out, $err) = (0, '', '');
$ret = $node->psql($db, $session, stdout => \$out, stderr => \$err,
	on_error_stop => 0, timeout => 120);
is($ret, 0, 'the session ran to its end');

my (%key, %id, %codes, @errcases, %tables);
for my $line (split /\n/, $out)
{
	my @f = split /\|/, $line, -1;
	next unless @f;
	if ($f[0] eq 'KEY') { $id{ $f[1] } = $f[2]; $key{ $f[1] } = $f[3]; }
	elsif ($f[0] eq 'CODE') { push @{ $codes{ $f[1] } }, [ $f[2], $f[3] ]; }
	elsif ($f[0] eq 'ERRCASE') { push @errcases, [ @f[ 1 .. 4 ] ]; }
	elsif ($f[0] eq 'TABLE') { $tables{ $f[1] } = [ $f[2], $f[3] ]; }
}

# needles: every key and every key's body (the part after the prefix)
my %needle;
for my $label (sort keys %key)
{
	$needle{"$label key"} = $key{$label};
	$needle{"$label body"} = substr($key{$label}, -38)
	  if length($key{$label}) >= 38;
}
is(scalar(keys %key), 8, 'eight plaintext keys and near-keys to search for');
like($out, qr/^DIGESTS\|5\|t$/m, 'the five stored digests are digest(key, sha256) of the keys searched for');

# mask(TEXT) -- TEXT with every needle replaced by its label.
sub mask
{
	my ($text) = @_;
	for my $n (sort { length($needle{$b}) <=> length($needle{$a}) } keys %needle)
	{
		$text =~ s/\Q$needle{$n}\E/<$n>/g;
	}
	return $text;
}

my @mismatch;
my %seen;
for my $label (sort keys %codes)
{
	for my $c (@{ $codes{$label} })
	{
		$seen{ $c->[0] } = 1;
		push @mismatch, "$label: $c->[0] (expected $c->[1])" if $c->[0] ne $c->[1];
	}
}
is(join('; ', @mismatch), '', 'every validation gave its expected code');
is(join(',', sort keys %seen),
	'expired,insufficient_scope,ip_not_allowed,malformed,not_found,revoked,valid',
	'every outcome code was produced');
like($out, qr/^READONLY\|valid$/m, 'validation inside READ ONLY');
like($out, qr/^FLUSHED\|t$/m, 'flush_usage() flushed');

# ---------------------------------------------------------------------------
# 2. Error messages: none contains a key.
# ---------------------------------------------------------------------------
ok(scalar(@errcases) >= 39, 'every error case ran (' . scalar(@errcases) . ')');
for my $e (@errcases)
{
	my ($label, $key_label, $sqlstate, $echoes) = @$e;
	is($echoes, 'f', "$label with the $key_label key ($sqlstate): the message does not echo a key");
}
my $client_stderr = mask($err);
my @echoed = grep { /<[a-z]+ (key|body)>/ } split /\n/, $client_stderr;
is(join("\n", @echoed), '', 'no error or notice sent to the client contains a key');

# ---------------------------------------------------------------------------
# 3. Bind parameters (pgbench -M prepared): validated, never logged.
# ---------------------------------------------------------------------------

# pgbench_with(KEY, [PGOPTIONS]) -- validate KEY 20 times as a bind
# parameter (pgbench reads ':name' even inside quotes, hence the permission
# as a variable too); returns pgbench's exit status and output.
my $script_no = 0;
sub pgbench_with
{
	my ($k, $options) = @_;
	my $file = $node->basedir . '/validate_' . (++$script_no) . '.sql';
	PostgreSQL::Test::Utils::append_to_file($file,
		"SELECT (apikeys.apikey_validate(:key, :permission, '10.1.2.3')).code;\n");
	local $ENV{PGOPTIONS} = $options // '';
	my ($o, $e) = ('', '');
	my $ok = IPC::Run::run(
		[ 'pgbench', '-n', '-M', 'prepared', '-t', '20', '-f', $file, '-D', "key=$k", '-D', 'permission=lists:read',
		  '-h', $node->host, '-p', $node->port, $db ],
		'>', \$o, '2>', \$e, IPC::Run::timeout(60));
	return ($ok, "$o$e");
}
for my $label ('main', 'revoked', 'typo')
{
	my ($ok, $output) = pgbench_with($key{$label});
	ok($ok && $output =~ m{processed: 20/20}, "pgbench -M prepared validates the $label key 20 times")
	  or diag(mask($output));
}

# ---------------------------------------------------------------------------
# 4. The worker: expiry pass and flushes, then positive controls.
# ---------------------------------------------------------------------------
my $t0 = time;
my $expired = 0;
while (time - $t0 < 30)
{
	$expired = $node->safe_psql($db,
		"SELECT count(*) FROM apikeys.audit WHERE event = 'expired' AND key_id = '$id{expired}'");
	last if $expired eq '1';
	usleep(200_000);
}
is($expired, '1', 'the worker marked the expired key and wrote its audit event');
is($node->safe_psql($db, 'SELECT apikeys.flush_usage()'), 't', 'usage flushed after the bind-parameter validations');
is($node->safe_psql($db,
		"SELECT sum(calls) > 0 AND sum(rejected) > 0 FROM apikeys.usage WHERE key_id IN ('$id{main}', '$id{revoked}')"),
	't', 'usage rows hold the valid and rejected calls');

# Positive controls: key-shaped strings written on purpose are found by the
# same searches (a statement literal in the log, a bind parameter logged
# when log_parameter_max_length allows it, a table row in the data files).
my $canary_stmt = 'np_canary_' . ('S' x 30) . 'stmt0001';
my $canary_param = 'np_canary_' . ('P' x 30) . 'param001';
my $canary_data = 'np_canary_' . ('D' x 30) . 'data0001';
$node->safe_psql($db, "SELECT '$canary_stmt' AS canary");
{
	my ($ok, $output) = pgbench_with($canary_param, '-c log_parameter_max_length=-1');
	ok($ok, 'pgbench with a canary parameter and log_parameter_max_length = -1') or diag($output);
}
$node->safe_psql($db, "CREATE TABLE public.canary AS SELECT repeat('$canary_data', 3) AS c; CHECKPOINT;");
$node->stop('fast');    # a clean stop also writes the usage dump and the stats

# ---------------------------------------------------------------------------
# 5. Search the server log and every file of the data directory.
# ---------------------------------------------------------------------------
my $log = slurp_file($node->logfile);
ok(index($log, $canary_stmt) >= 0, 'control: a key-shaped literal in a statement is found in the log');
ok(index($log, $canary_param) >= 0,
	'control: a bind parameter is logged when log_parameter_max_length allows it');
ok(length($log) > 10_000, 'the log is not empty (' . length($log) . ' bytes)');
for my $n (sort keys %needle)
{
	my @lines = grep { index($_, $needle{$n}) >= 0 } split /\n/, $log;
	is(scalar(@lines), 0, "server log: no $n")
	  or diag(join("\n", map { mask($_) } @lines[ 0 .. ($#lines < 4 ? $#lines : 4) ]));
}

my %file_hits;
my $files = 0;
my $found_canary = 0;
find(
	{
		no_chdir => 1,
		wanted => sub {
			return unless -f $_;
			$files++;
			open(my $fh, '<:raw', $_) or return;
			local $/;
			my $data = <$fh>;
			close($fh);
			$found_canary = 1 if index($data, $canary_data) >= 0;
			for my $n (keys %needle)
			{
				push @{ $file_hits{$n} }, $File::Find::name =~ s/^\Q${\$node->data_dir}\E\///r
				  if index($data, $needle{$n}) >= 0;
			}
		}
	},
	$node->data_dir);
ok($found_canary, "control: a key-shaped string in a table is found in the data files ($files files searched)");
for my $n (sort keys %needle)
{
	is(join(', ', @{ $file_hits{$n} // [] }), '', "data directory: no $n");
}

# The tables of the extension, checked in SQL before the session ended.
ok(exists $tables{keys} && exists $tables{audit} && exists $tables{usage} && exists $tables{scopes},
	'every table of the extension was searched');
for my $t (sort keys %tables)
{
	is($tables{$t}[1], '0', "table apikeys.$t ($tables{$t}[0] rows): no key or key body in any row");
}

done_testing();
