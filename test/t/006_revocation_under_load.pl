# 006_revocation_under_load.pl -- a committed revocation is seen by every
# validation that starts afterwards, in every session, under load (SPEC §3,
# apikey_revoke: "Once the revoking transaction commits, every later
# validation of that key, in every session, returns revoked").
#
# Six pgbench clients validate a set of keys in a loop for a few seconds
# (with the per-backend key cache warm: the same few keys again and again),
# in three shapes of transaction: one validation per transaction, a loop of
# validations inside one READ COMMITTED transaction, and two loops inside
# one REPEATABLE READ transaction. Each validation is logged with the
# clock time just before it started and its code. Meanwhile another session
# revokes keys one at a time in autocommit mode and, in the NEXT statement
# (so after the commit has returned to the client), records the clock time.
#
#   - no validation that started after a revocation's commit had returned
#     answered 'valid' for that key (the heart of the test; a stale cache, a
#     snapshot-bound read or a lost invalidation shows up here)
#   - each revoked key was seen 'valid' before and 'revoked' after, and the
#     load went on after the last revocation (the test exercised something)
#   - keys never revoked were 'valid' every time
#   - zero failed pgbench transactions, every revoke returned true
#   - after flush_usage(), apikeys.usage holds exactly the logged outcomes
#     per key: 'valid' as calls, 'revoked' as rejected
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use IPC::Run;
use List::Util qw(shuffle);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $n_keys = 24;         # validated by every client
my $n_revoke = 20;       # revoked one at a time; the other 4 stay valid
my $revoke_gap = 0.25;   # seconds between two revocations
my $lead_in = 3000;      # validations logged under load before the first revocation
my $clients = 6;
my $duration = 10;       # pgbench -T: > n_revoke * gap + the lead-in + 2 s after

# a short flush interval: the worker's last_used_at updates of apikeys.keys
# run concurrently with the revocations (and must not disturb them)
my $node = new_node('revocation_load', "apikeys.flush_interval = '200ms'");
my $db = 'postgres';
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'the database gets its worker');

# keys n = 1..24 in public.test_keys(n, id, key) (plaintext stays in the
# database and in Perl; never printed)
my @keys = create_keys($node, $db, 'load', $n_keys);
is(scalar @keys, $n_keys, "$n_keys keys for owner 'load'");
my %id_of = map { ($_ + 1) => $keys[$_][0] } 0 .. $#keys;

# The harness: vlog holds one row per validation, its start time taken
# just before apikey_validate is called.
sql($node, $db, q{
	CREATE UNLOGGED TABLE vlog (n int NOT NULL, started_at timestamptz NOT NULL,
	                            code text NOT NULL, key_id text);
	CREATE UNLOGGED TABLE rlog (n int PRIMARY KEY, commit_done timestamptz NOT NULL);
	CREATE FUNCTION validate_loop(iters int) RETURNS int
	LANGUAGE plpgsql AS $$
	DECLARE
		ks text[] := (SELECT array_agg(key ORDER BY n) FROM public.test_keys);
		nk int := array_length(ks, 1);
		k int;
		t timestamptz;
		v apikeys.validation;
	BEGIN
		FOR i IN 1 .. iters LOOP
			k := 1 + floor(random() * nk)::int;
			t := clock_timestamp();
			v := apikeys.apikey_validate(ks[k]);
			INSERT INTO public.vlog VALUES (k, t, v.code, v.key_id);
		END LOOP;
		RETURN iters;
	END
	$$;
});

# warm-up: each key validated 3 times, logged (usage must match), and the
# harness once
is(sql($node, $db, q{
	INSERT INTO vlog SELECT n, clock_timestamp(), (v).code, (v).key_id
	  FROM (SELECT n, apikeys.apikey_validate(key) AS v
	          FROM public.test_keys, generate_series(1, 3)) s;
	SELECT validate_loop(10);
	SELECT count(DISTINCT n) || ':' || string_agg(DISTINCT code, ',') FROM vlog}),
	"10\n$n_keys:valid", 'every key validates before the load; the harness works');

# ---------------------------------------------------------------------------
# The load and the revoker, at the same time
# ---------------------------------------------------------------------------
my $dir = $node->basedir;
my %scripts = (
	single => "SELECT validate_loop(1);\n",
	loop => "SELECT validate_loop(20);\n",
	rr => "BEGIN ISOLATION LEVEL REPEATABLE READ;\n"
	  . "SELECT validate_loop(10);\nSELECT pg_sleep(0.005);\nSELECT validate_loop(10);\nCOMMIT;\n",
);
my %weight = (single => 3, loop => 2, rr => 1);
for my $s (keys %scripts)
{
	PostgreSQL::Test::Utils::append_to_file("$dir/rl_$s.sql", $scripts{$s});
}

# the revoker: autocommit, so each apikey_revoke commits when its
# statement ends; the INSERT runs only after that commit has returned
my @order = (shuffle(1 .. $n_keys))[0 .. $n_revoke - 1];
my @revoked_n = sort { $a <=> $b } @order;
# first, wait (at most 30 s) until the load has logged $lead_in validations
my $rsql = "DO \$\$ BEGIN FOR i IN 1 .. 600 LOOP EXIT WHEN (SELECT count(*) FROM public.vlog) >= $lead_in; "
  . "PERFORM pg_sleep(0.05); END LOOP; END \$\$;\n";
for my $n (@order)
{
	$rsql .= "SELECT apikeys.apikey_revoke('$id_of{$n}');\n"
	  . "INSERT INTO public.rlog VALUES ($n, clock_timestamp());\n"
	  . "SELECT pg_sleep($revoke_gap);\n";
}
PostgreSQL::Test::Utils::append_to_file("$dir/rl_revoker.sql", $rsql);

my @pgbench = (
	'pgbench', '-n', '-M', 'prepared', '-c', $clients, '-j', 3, '-T', $duration,
	(map { ('-f', "$dir/rl_$_.sql\@$weight{$_}") } sort keys %scripts),
	'-h', $node->host, '-p', $node->port, $db);
my ($pb_out, $pb_err) = ('', '');
my $t0 = time;
my $pb = IPC::Run::start(\@pgbench, '>', \$pb_out, '2>', \$pb_err,
	IPC::Run::timeout($duration + 60));
my ($rv_out, $rv_err) = ('', '');
my $rv = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db),
	  '-f', "$dir/rl_revoker.sql" ],
	'>', \$rv_out, '2>', \$rv_err, IPC::Run::timeout($duration + 60));
my $rv_ok = eval { $rv->finish } // 0;
my $pb_ok = eval { $pb->finish } // 0;
note(sprintf('load and revoker ran %.1fs', time - $t0));

ok($rv_ok, 'the revoker ran to the end') or diag("revoker stderr: $rv_err");
my @rv_answers = grep { $_ ne '' } split /\n/, $rv_out;
is(join(',', @rv_answers), join(',', ('t') x $n_revoke),
	"each of the $n_revoke apikey_revoke calls returned true");

ok($pb_ok, 'pgbench exited with status 0') or diag("pgbench stderr:\n$pb_err");
unlike($pb_err, qr/aborted|error/i, 'no pgbench client aborted, no error')
  or diag("pgbench stderr:\n$pb_err");
like($pb_out, qr/number of failed transactions: 0 /, 'zero failed pgbench transactions')
  or diag("pgbench stdout:\n$pb_out");
my ($txns) = $pb_out =~ /number of transactions actually processed: (\d+)/;
note("pgbench: " . ($txns // '?') . " transactions");

# ---------------------------------------------------------------------------
# What every validation answered
# ---------------------------------------------------------------------------
sql($node, $db, 'CREATE INDEX ON vlog (n, code, started_at); ANALYZE vlog');
my ($total, $n_valid, $n_revoked, $other) = split /\|/, sql($node, $db, q{
	SELECT count(*), count(*) FILTER (WHERE code = 'valid'),
	       count(*) FILTER (WHERE code = 'revoked'),
	       count(*) FILTER (WHERE code NOT IN ('valid', 'revoked'))
	  FROM vlog});
note("$total validations logged: $n_valid valid, $n_revoked revoked, $other other");
ok($total > 5000, "a real load: $total validations logged (> 5000)");
is($other, '0', "every validation answered 'valid' or 'revoked'");
is(sql($node, $db, 'SELECT count(*) FROM vlog v JOIN public.test_keys t USING (n) WHERE v.key_id IS DISTINCT FROM t.id'),
	'0', 'every validation returned the id of the key it was given');

is(sql($node, $db, 'SELECT count(*) FROM rlog'), $n_revoke, "$n_revoke commit times recorded");
is(sql($node, $db, q{
	SELECT count(*) FROM rlog r JOIN public.test_keys t USING (n)
	  JOIN apikeys.keys k ON k.id = t.id
	 WHERE k.revoked_at IS NULL OR k.revoked_at > r.commit_done}),
	'0', "each key's revoked_at precedes the time recorded after its commit");

# THE guarantee: nothing that started after the commit returned 'valid'
my $late = sql($node, $db, q{
	SELECT count(*) || '|' || count(DISTINCT v.n) FROM vlog v JOIN rlog r USING (n)
	 WHERE v.code = 'valid' AND v.started_at > r.commit_done});
my ($late_n, $late_keys) = split /\|/, $late;
is($late_n, '0',
	"no validation that started after a revocation committed returned 'valid' ($late_n did, over $late_keys keys)")
  or diag(sql($node, $db, q{
	SELECT string_agg(format('%s: %s valid after the commit, the last %s ms after it',
	                         t.id, c, round(extract(epoch FROM last - commit_done) * 1000)), E'\n')
	  FROM (SELECT v.n, r.commit_done, count(*) AS c, max(v.started_at) AS last
	          FROM vlog v JOIN rlog r USING (n)
	         WHERE v.code = 'valid' AND v.started_at > r.commit_done
	         GROUP BY v.n, r.commit_done) s
	  JOIN public.test_keys t USING (n)}));

# validations in flight at the commit (started between revoked_at and the
# recorded commit time) may answer either way: reported, not judged
note('in flight across a commit: ' . sql($node, $db, q{
	SELECT count(*) FILTER (WHERE v.code = 'valid') || ' valid, '
	       || count(*) FILTER (WHERE v.code = 'revoked') || ' revoked'
	  FROM vlog v JOIN rlog r USING (n) JOIN public.test_keys t USING (n)
	  JOIN apikeys.keys k ON k.id = t.id
	 WHERE v.started_at BETWEEN k.revoked_at AND r.commit_done}));

# the test exercised something: each revoked key seen valid before its
# revocation and revoked after; the load ran on after the last one
is(sql($node, $db, q{
	SELECT count(*) FROM rlog r
	 WHERE NOT EXISTS (SELECT FROM vlog v WHERE v.n = r.n AND v.code = 'valid' AND v.started_at < r.commit_done)
	    OR NOT EXISTS (SELECT FROM vlog v WHERE v.n = r.n AND v.code = 'revoked' AND v.started_at > r.commit_done)}),
	'0', "each revoked key was seen 'valid' before its revocation and 'revoked' after");
my $tail = sql($node, $db,
	q{SELECT round(extract(epoch FROM (SELECT max(started_at) FROM vlog) - (SELECT max(commit_done) FROM rlog))::numeric, 2)});
ok($tail >= 1, "the load went on ${tail}s after the last revocation (>= 1 s)");

# keys never revoked: valid every time
my $controls = join(',', grep { my $n = $_; !grep { $_ == $n } @revoked_n } 1 .. $n_keys);
is(sql($node, $db,
		"SELECT count(*) FILTER (WHERE code <> 'valid') || '/' || (count(*) > 0)::text FROM vlog WHERE n IN ($controls)"),
	'0/true', "the keys never revoked answered 'valid' every time");
is(sql($node, $db, "SELECT count(*) FROM apikeys.keys WHERE owner = 'load' AND revoked_at IS NOT NULL"),
	$n_revoke, "exactly $n_revoke keys are revoked");

# ---------------------------------------------------------------------------
# Usage: exactly what was logged, per key
# ---------------------------------------------------------------------------
flush_usage($node, $db);
my %logged;
for my $line (split /\n/, sql($node, $db, q{
	SELECT t.id, count(*) FILTER (WHERE v.code = 'valid'), count(*) FILTER (WHERE v.code = 'revoked')
	  FROM vlog v JOIN public.test_keys t USING (n) GROUP BY t.id}))
{
	my ($id, $c, $r) = split /\|/, $line;
	$logged{$id} = [ $c + 0, $r + 0 ];
}
is_deeply(usage_of($node, $db), \%logged,
	'apikeys.usage: calls = logged valid, rejected = logged revoked, per key, exactly');
is(sql($node, $db, "SELECT sum(calls) || '/' || sum(rejected) FROM apikeys.apikey_usage('load', 2)"),
	"$n_valid/$n_revoked", "apikey_usage('load') totals $n_valid calls / $n_revoked rejected");

check_no_crash($node);
$node->stop;
done_testing();
