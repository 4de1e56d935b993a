# 016_ratelimits.pl -- rate limits (SPEC section 12) under concurrency, in
# time, with a full state table and across a restart, on one cluster.
#
#   a. 8 pgbench clients x 100 calls against a key limit of 50 per hour:
#      exactly 50 valid and 750 rate_limited (each outcome is inserted in
#      the call's own transaction, so the counts are exact), the valid
#      calls report remaining 49 .. 0 once each, and apikeys.usage counts
#      the 750 as rejected.
#   b. An owner limit of 60 per hour shared by two keys, 4 clients on each
#      (two pgbench runs at once, 400 calls): exactly 60 valid in all.
#   c. A window that slides, 3 per 2 s: 3 pass, the 4th is refused, 1 s
#      later still; just before the ratelimit_reset the refused call
#      reported, still refused; just after it, a call passes.  Then a call
#      every 50 ms for 5 s: no window of 2 s holds more than 3 valid calls
#      (every pair of valid calls 3 apart is more than 2 s apart), a
#      refused call always had 3 valid calls within the 2.2 s before it
#      (refused at most per/10 early; 20 ms allowed for timing), and the
#      window kept sliding.
#   d. Under load (4 pgbench clients for 3 s on a key limited to 20 per
#      hour), the max raised to 60, then to 1,000,000, then the limit
#      dropped: exactly 20 valid before the first raise, exactly 60 before
#      the second (the counts already in the window apply to a changed
#      max), and every call that started after the second raise or the
#      drop had committed is valid, in every session.
#   g. A limit set while a session's statement runs holds from that
#      session's next statement; a limit dropped while a session is in a
#      REPEATABLE READ transaction is gone at its next call (changes take
#      effect at the next call in every session).
#   f. Counts live in shared memory: after a restart a key's window is
#      empty again (docs/sql-api.md, "Per server": a restart starts every
#      window empty; nothing is persisted).
#   e. apikeys.max_ratelimit_states = 100 (its minimum) and 300 keys with a
#      limit of 1 per 3 s each, after a second restart (f's window would
#      hold a state for an hour): every validation returns at once (the
#      longest is reported), the first 100 limits are counted and the other
#      200 are not (looser, never stricter) and report no limit (NULL); the
#      server stays up; once the windows have passed, flush_usage() has the
#      worker purge them and 100 limits are counted again (others than
#      before).
#
# About 30 s.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $db = 'postgres';
# nothing flushes (or purges) unless flush_usage() asks
my $node = new_node('ratelimits', "apikeys.flush_interval = '1h'");
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'the database gets its worker');

# Keys by label in public.rl_keys (plaintext stays in the database and in
# Perl; never printed); each outcome in public.outcomes, inserted in the
# call's own transaction, with its transaction's start and the clock just
# after the call.
sql($node, $db, q{
	CREATE TABLE public.rl_keys (label text PRIMARY KEY, id text NOT NULL, key text NOT NULL);
	CREATE UNLOGGED TABLE public.outcomes (part text NOT NULL, label text NOT NULL, code text NOT NULL,
	                                       remaining int, started timestamptz, finished timestamptz,
	                                       pid int DEFAULT pg_backend_pid());
	CREATE UNLOGGED TABLE public.events (part text NOT NULL, event text NOT NULL, at timestamptz NOT NULL);
});

# new_keys(OWNER, LABEL...) -- one key of OWNER per label; returns the ids
sub new_keys
{
	my ($owner, @labels) = @_;
	my $list = join(',', map { "'$_'" } @labels);
	sql($node, $db, qq{
		INSERT INTO public.rl_keys
		SELECT l, k.id, k.key FROM unnest(ARRAY[$list]) AS l,
		       LATERAL apikeys.apikey_create(owner => '$owner', name => l) AS k});
	return map { sql($node, $db, "SELECT id FROM public.rl_keys WHERE label = '$_'") } @labels;
}

# codes(PART) -- "code:count,..." of the outcomes of PART
sub codes
{
	my ($part) = @_;
	return sql($node, $db, qq{
		SELECT string_agg(code || ':' || n, ',' ORDER BY code)
		  FROM (SELECT code, count(*) AS n FROM public.outcomes WHERE part = '$part' GROUP BY code) s});
}

# the pgbench script of PART: one validation of the key LABEL per transaction
sub call_script
{
	my ($part, $label) = @_;
	return <<"EOS";
INSERT INTO public.outcomes (part, label, code, remaining, started, finished)
SELECT '$part', t.label, v.code, v.ratelimit_remaining, now(), clock_timestamp()
  FROM public.rl_keys AS t, LATERAL apikeys.apikey_validate(t.key) AS v
 WHERE t.label = '$label';
EOS
}

# start_pgbench(SCRIPT, ARGS...) -- pgbench in the background; a handle
my $script_no = 0;
sub start_pgbench
{
	my ($script, @args) = @_;
	my $file = $node->basedir . '/rl_' . (++$script_no) . '.sql';
	PostgreSQL::Test::Utils::append_to_file($file, $script);
	my $h = { out => '', err => '' };
	$h->{run} = IPC::Run::start(
		[ 'pgbench', '-n', '-M', 'prepared', @args, '-f', $file,
		  '-h', $node->host, '-p', $node->port, $db ],
		'>', \$h->{out}, '2>', \$h->{err}, IPC::Run::timeout(60));
	return $h;
}

# finish_pgbench(HANDLE, TOTAL or undef, NAME) -- waits; a test that it ran
# without error (and TOTAL transactions, when given)
sub finish_pgbench
{
	my ($h, $total, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $ok = eval { $h->{run}->finish } // 0;
	my $processed = $h->{out} =~ /number of transactions actually processed: (\d+)/ ? $1 : 0;
	$ok &&= $h->{out} =~ /number of failed transactions: 0 / && $h->{err} !~ /aborted|error/i;
	$ok &&= $processed == $total if defined $total;
	ok($ok, $name) or diag("pgbench stdout:\n$h->{out}\nstderr:\n$h->{err}");
	return $processed;
}

# ---------------------------------------------------------------------------
# a. 8 clients x 100 calls against a key limit of 50 per hour
# ---------------------------------------------------------------------------
my ($a_id) = new_keys('rl_a', 'a');
sql($node, $db, "SELECT apikeys.apikey_ratelimit_set('hourly', 50, '1 hour', key_id => '$a_id')");
finish_pgbench(start_pgbench(call_script('a', 'a'), '-c', 8, '-j', 4, '-t', 100),
	800, 'a: pgbench ran 800 calls (8 clients x 100)');
is(codes('a'), 'rate_limited:750,valid:50',
	'a: 800 concurrent calls against a limit of 50: exactly 50 valid, 750 rate_limited');
is(sql($node, $db, q{
	SELECT count(DISTINCT remaining) || ' ' || min(remaining) || ' ' || max(remaining)
	  FROM public.outcomes WHERE part = 'a' AND code = 'valid'}),
	'50 0 49', 'a: the 50 valid calls reported remaining 49 .. 0, each once');
is(sql($node, $db, "SELECT count(*) FROM public.outcomes WHERE part = 'a' AND code <> 'valid' AND remaining <> 0"),
	'0', 'a: every refused call reported remaining 0');
flush_usage($node, $db);
is_deeply(usage_of($node, $db)->{$a_id}, [ 50, 750 ],
	'a: apikeys.usage: 50 calls, 750 rejected (rate_limited counts as rejected)');

# ---------------------------------------------------------------------------
# b. An owner limit of 60 shared by two keys, 4 clients on each
# ---------------------------------------------------------------------------
my ($b1_id, $b2_id) = new_keys('rl_b', 'b1', 'b2');
sql($node, $db, "SELECT apikeys.apikey_ratelimit_set('account', 60, '1 hour', owner => 'rl_b')");
# both runs start together: each transaction first waits for the 'go' row
# (a no-op once it is there), which is inserted once all 8 clients wait
sql($node, $db, q{
	CREATE FUNCTION public.wait_go(p text) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		FOR i IN 1 .. 30000 LOOP
			EXIT WHEN EXISTS (SELECT FROM public.events WHERE part = p AND event = 'go');
			PERFORM pg_sleep(0.001);
		END LOOP;
	END $$});
my @b = map { start_pgbench("SELECT public.wait_go('b');\n" . call_script('b', $_), '-c', 4, '-j', 2, '-t', 50) }
  'b1', 'b2';
ok(defined wait_until($node, $db, "SELECT count(*) FROM pg_stat_activity
	WHERE query = 'SELECT public.wait_go(''b'');'", '8', 30),
	'b: the 8 clients of both runs are connected and waiting')
  or diag(sql($node, $db, "SELECT string_agg(application_name || ' ' || state || ' ' || query, E'\n')
	FROM pg_stat_activity WHERE backend_type = 'client backend'"));
sql($node, $db, "INSERT INTO public.events VALUES ('b', 'go', clock_timestamp())");
finish_pgbench($b[0], 200, 'b: pgbench on key b1 ran 200 calls (4 clients x 50)');
finish_pgbench($b[1], 200, 'b: pgbench on key b2 ran 200 calls, at the same time');
is(codes('b'), 'rate_limited:340,valid:60',
	'b: 400 calls of two keys against their owner limit of 60: exactly 60 valid in all');
note('b: valid per key: ' . sql($node, $db, q{
	SELECT string_agg(label || ' ' || n, ', ' ORDER BY label)
	  FROM (SELECT label, count(*) AS n FROM public.outcomes WHERE part = 'b' AND code = 'valid' GROUP BY label) s}));
is(sql($node, $db, q{
	SELECT count(DISTINCT remaining) || ' ' || min(remaining) || ' ' || max(remaining)
	  FROM public.outcomes WHERE part = 'b' AND code = 'valid'}),
	'60 0 59', "b: the valid calls of both keys counted down one window: remaining 59 .. 0, each once");

# ---------------------------------------------------------------------------
# c. A window that slides: 3 per 2 s
# ---------------------------------------------------------------------------
my ($c_id, $c2_id) = new_keys('rl_c', 'c', 'c2');
sql($node, $db, "SELECT apikeys.apikey_ratelimit_set('slide', 3, '2 seconds', key_id => '$c_id')");
sql($node, $db, "SELECT apikeys.apikey_ratelimit_set('slide', 3, '2 seconds', key_id => '$c2_id')");
# one call of c: "code remaining reset-in-seconds-from-now reset-as-epoch"
my $call_c = q{
	SELECT v.code || ' ' || v.ratelimit_remaining || ' '
	       || round(extract(epoch FROM v.ratelimit_reset - clock_timestamp())::numeric, 3) || ' '
	       || extract(epoch FROM v.ratelimit_reset)
	  FROM public.rl_keys AS t, LATERAL apikeys.apikey_validate(t.key) AS v WHERE t.label = 'c'};
my @first = map { (split / /, sql($node, $db, $call_c))[0] } 1 .. 3;
is(join(',', @first), 'valid,valid,valid', 'c: 3 calls pass');
my ($code, $rem, $reset_in, $reset_at) = split / /, sql($node, $db, $call_c);
is("$code $rem", 'rate_limited 0', 'c: the 4th is refused');
ok($reset_in > 0 && $reset_in <= 2.2,
	"c: the refused call's ratelimit_reset is ${reset_in}s ahead: in the future, at most per + per/10");
usleep(1_000_000);
($code) = split / /, sql($node, $db, $call_c);
is($code, 'rate_limited', 'c: 1 s later, still refused');
# just before the reported reset: refused; just after: a call passes
my $before_reset = sql($node, $db, qq{
	SELECT pg_sleep(extract(epoch FROM to_timestamp($reset_at) - clock_timestamp()) - 0.15);
	$call_c});
($code, undef, $reset_in) = split / /, (split /\n/, $before_reset)[-1];
is($code, 'rate_limited', "c: 0.15 s before the reset it reported, still refused (reset ${reset_in}s ahead)");
my $after_reset = sql($node, $db, qq{
	SELECT pg_sleep(extract(epoch FROM to_timestamp($reset_at) - clock_timestamp()) + 0.05);
	$call_c});
($code) = split / /, (split /\n/, $after_reset)[-1];
is($code, 'valid', 'c: once the window has slid past the reset it reported, a call passes again');

# a call of c2 every 50 ms for 5 s, each logged with the clock just after it
sql($node, $db, q{
	DO $$
	DECLARE
		k text := (SELECT key FROM public.rl_keys WHERE label = 'c2');
		t0 timestamptz := clock_timestamp();
		v apikeys.validation;
	BEGIN
		WHILE clock_timestamp() < t0 + interval '5 seconds' LOOP
			v := apikeys.apikey_validate(k);
			INSERT INTO public.outcomes (part, label, code, remaining, finished)
			VALUES ('c', 'c2', v.code, v.ratelimit_remaining, clock_timestamp());
			PERFORM pg_sleep(0.05);
		END LOOP;
	END
	$$});
my ($n_valid, $n_refused) = split / /, sql($node, $db, q{
	SELECT count(*) FILTER (WHERE code = 'valid') || ' ' || count(*) FILTER (WHERE code = 'rate_limited')
	  FROM public.outcomes WHERE label = 'c2'});
note("c: over 5 s, $n_valid valid and $n_refused refused calls of c2");
is(sql($node, $db, q{
	SELECT count(*) FROM public.outcomes a JOIN public.outcomes b
	    ON b.label = 'c2' AND b.code = 'valid' AND b.finished >= a.finished
	   AND b.finished <= a.finished + interval '2 seconds'
	 WHERE a.label = 'c2' AND a.code = 'valid'
	 GROUP BY a.finished HAVING count(*) > 3}),
	'', 'c: no window of 2 s holds more than 3 valid calls (every pair checked)');
is(sql($node, $db, q{
	SELECT count(*) FROM public.outcomes r
	 WHERE r.label = 'c2' AND r.code = 'rate_limited'
	   AND (SELECT count(*) FROM public.outcomes a
	         WHERE a.label = 'c2' AND a.code = 'valid'
	           AND a.finished BETWEEN r.finished - interval '2.22 seconds' AND r.finished) < 3}),
	'0', 'c: every refused call had 3 valid calls in the 2.2 s before it (refused at most per/10 early, 20 ms allowed for timing)');
ok($n_valid >= 6 && $n_refused > 0,
	"c: the window slid: $n_valid calls passed in 5 s (>= 6), $n_refused were refused");
is(sql($node, $db, q{
	SELECT count(*) FROM (SELECT finished - lag(finished, 3) OVER (ORDER BY finished) AS gap
	                        FROM public.outcomes WHERE label = 'c2' AND code = 'valid') s
	 WHERE gap <= interval '2 seconds'}),
	'0', 'c: any two valid calls three apart are more than 2 s apart');

# ---------------------------------------------------------------------------
# d. A limit raised, then dropped, under load
# ---------------------------------------------------------------------------
my ($d_id) = new_keys('rl_d', 'd');
sql($node, $db, "SELECT apikeys.apikey_ratelimit_set('hourly', 20, '1 hour', key_id => '$d_id')");
my $load = start_pgbench(call_script('d', 'd'), '-c', 4, '-j', 4, '-T', 3);
# the changer: once the load has logged 300 calls, raise max to 60, 0.5 s
# later to 1,000,000 (room for the whole load), 0.5 s later drop the
# limit; each change in autocommit (psql -f: one statement, one
# transaction), its times recorded before it began and after its commit
# had returned.  (The 40 calls the raise to 60 allows are used up within
# a millisecond of its commit, by whichever sessions come first; the raise
# to 1,000,000 is what shows every session taking the change at once.)
my $changer_sql = $node->basedir . '/rl_changer.sql';
PostgreSQL::Test::Utils::append_to_file($changer_sql, qq{
DO \$\$ BEGIN
	FOR i IN 1 .. 600 LOOP
		EXIT WHEN (SELECT count(*) FROM public.outcomes WHERE part = 'd') >= 300;
		PERFORM pg_sleep(0.02);
	END LOOP;
END \$\$;
INSERT INTO public.events VALUES ('d', 'raise_begin', clock_timestamp());
SELECT apikeys.apikey_ratelimit_set('hourly', 60, '1 hour', key_id => '$d_id');
INSERT INTO public.events VALUES ('d', 'raise_done', clock_timestamp());
SELECT pg_sleep(0.5);
INSERT INTO public.events VALUES ('d', 'open_begin', clock_timestamp());
SELECT apikeys.apikey_ratelimit_set('hourly', 1000000, '1 hour', key_id => '$d_id');
INSERT INTO public.events VALUES ('d', 'open_done', clock_timestamp());
SELECT pg_sleep(0.5);
INSERT INTO public.events VALUES ('d', 'drop_begin', clock_timestamp());
SELECT apikeys.apikey_ratelimit_drop('hourly', key_id => '$d_id');
INSERT INTO public.events VALUES ('d', 'drop_done', clock_timestamp());
});
my ($changer_out, $changer_err) = ('', '');
my $changer_ok = IPC::Run::run(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-f', $changer_sql ],
	'>', \$changer_out, '2>', \$changer_err, IPC::Run::timeout(60));
ok($changer_ok && $changer_out =~ /^t$/m, 'd: the limit was raised and dropped under load')
  or diag("changer stdout: $changer_out\nstderr: $changer_err");
my $d_total = finish_pgbench($load, undef, 'd: the load ran without error');
note("d: $d_total calls under load");
# at(EVENT) -- the time of a changer event, as an SQL expression
my $at = sub { "(SELECT at FROM public.events WHERE part = 'd' AND event = '$_[0]')" };
is(sql($node, $db, "SELECT count(*) FROM public.outcomes WHERE part = 'd' AND code = 'valid'
	AND finished < " . $at->('raise_begin')),
	'20', 'd: exactly 20 valid calls before the raise');
ok(sql($node, $db, "SELECT count(*) FROM public.outcomes WHERE part = 'd' AND code = 'rate_limited'
	AND finished < " . $at->('raise_begin')) > 0, 'd: ... and the limit of 20 refused calls then');
# by_session(AFTER) -- per session, the codes of the calls that started
# after event AFTER, in order, runs of the same code counted
my $by_session = sub {
	return sql($node, $db, "SELECT string_agg(pid || ': ' || runs, E'\n' ORDER BY pid) FROM (
		SELECT pid, string_agg(code || ' x' || n, ', ' ORDER BY first) AS runs FROM (
			SELECT pid, code, count(*) AS n, min(finished) AS first FROM (
				SELECT pid, code, finished, row_number() OVER (PARTITION BY pid ORDER BY finished)
				       - row_number() OVER (PARTITION BY pid, code ORDER BY finished) AS run
				  FROM public.outcomes WHERE part = 'd' AND started > " . $at->($_[0]) . ") r
			 GROUP BY pid, code, run) g GROUP BY pid) s");
};
is(sql($node, $db, "SELECT count(*) FROM public.outcomes WHERE part = 'd' AND code = 'valid'
	AND finished < " . $at->('open_begin')),
	'60', 'd: max raised to 60: exactly 60 valid calls in all before the next change (the 20 already in the window count)');
ok(sql($node, $db, "SELECT count(*) FROM public.outcomes WHERE part = 'd' AND code = 'rate_limited'
	AND started > " . $at->('raise_done') . ' AND finished < ' . $at->('open_begin')) > 0,
	'd: ... and the limit of 60 refused calls then');
my ($open, $open_bad) = split / /, sql($node, $db, "SELECT count(*) || ' ' || count(*) FILTER (WHERE code <> 'valid')
	FROM public.outcomes WHERE part = 'd' AND started > " . $at->('open_done') . ' AND finished < ' . $at->('drop_begin'));
ok($open > 100, "d: max raised to 1,000,000: $open calls started after that commit, before the drop");
is($open_bad, '0', 'd: every one of them passed, in every session: the raised max took effect at once')
  or diag("after the raise to 1,000,000, per session:\n" . $by_session->('open_done'));
my ($late, $late_bad) = split / /, sql($node, $db, "SELECT count(*) || ' ' || count(*) FILTER (WHERE code <> 'valid')
	FROM public.outcomes WHERE part = 'd' AND started > " . $at->('drop_done'));
ok($late > 100, "d: the load went on after the drop ($late calls)");
is($late_bad, '0', 'd: every call that started after the drop committed passed (in every session)')
  or diag("after the drop, per session:\n" . $by_session->('drop_done'));

# ---------------------------------------------------------------------------
# g. A change reaches a session whose statement, or REPEATABLE READ
#    transaction, began before it committed
# ---------------------------------------------------------------------------
my ($g_id, $g_key) = (new_keys('rl_g', 'g'), sql($node, $db, "SELECT key FROM public.rl_keys WHERE label = 'g'"));
my $g_call = "SELECT '%s ' || code || ' ' || COALESCE(ratelimit_limit::text, 'none') FROM apikeys.apikey_validate('$g_key');";
my $g_sql = $node->basedir . '/rl_g.sql';
PostgreSQL::Test::Utils::append_to_file($g_sql, join("\n",
	"SET application_name = 'rl_g';",
	sprintf($g_call, 'warm'),
	# the limit is set while this statement sleeps
	"SELECT 'inflight ' || (apikeys.apikey_validate('$g_key')).code FROM pg_sleep(2.1);",
	sprintf($g_call, 'next'),
	sprintf($g_call, 'then'),
	'BEGIN ISOLATION LEVEL REPEATABLE READ;',
	sprintf($g_call, 'rr_before'),
	# the limit is dropped while this transaction sleeps
	'SELECT pg_sleep(2.2);',
	sprintf($g_call, 'rr_after'),
	'COMMIT;',
	sprintf($g_call, 'after_rr'), ''));
my ($g_out, $g_err) = ('', '');
my $g_run = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-f', $g_sql ],
	'>', \$g_out, '2>', \$g_err, IPC::Run::timeout(60));
# sleeping(SECONDS) -- waits until that session sleeps in pg_sleep(SECONDS)
my $sleeping = sub {
	return wait_until($node, $db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rl_g'
		AND wait_event = 'PgSleep' AND query LIKE '%pg_sleep($_[0])%'", '1', 20);
};
ok(defined $sleeping->('2.1'), 'g: the session sleeps inside a statement');
sql($node, $db, "SELECT apikeys.apikey_ratelimit_set('hourly', 1, '1 hour', key_id => '$g_id')");
ok(defined $sleeping->('2.2'), 'g: the session sleeps inside a REPEATABLE READ transaction');
sql($node, $db, "SELECT apikeys.apikey_ratelimit_drop('hourly', key_id => '$g_id')");
my $g_ok = eval { $g_run->finish } // 0;
ok($g_ok, 'g: the session ran to the end') or diag("stderr: $g_err");
my %g = map { /^(\w+) (.*)$/ ? ($1 => $2) : () } split /\n/, $g_out;
is($g{warm}, 'valid none', 'g: before the limit: valid, no limit');
note("g: the call in flight when the limit was set: $g{inflight}");
like($g{next} // '', qr/^(valid|rate_limited) 1$/,
	"g: the next statement of that session sees the limit of 1 ($g{next})");
is($g{then}, 'rate_limited 1', 'g: ... and the one after is refused: the limit holds in that session');
is($g{rr_before}, 'rate_limited 1', 'g: in a REPEATABLE READ transaction: refused');
is($g{rr_after}, 'valid none',
	'g: the limit dropped during the transaction is gone at its next call (inside the transaction)');
is($g{after_rr}, 'valid none', 'g: ... and after it');

# ---------------------------------------------------------------------------
# f. Counts live in shared memory: a restart empties every window
# ---------------------------------------------------------------------------
my ($f_id, $f_key) = (new_keys('rl_f', 'f'), sql($node, $db, "SELECT key FROM public.rl_keys WHERE label = 'f'"));
sql($node, $db, "SELECT apikeys.apikey_ratelimit_set('hourly', 2, '1 hour', key_id => '$f_id')");
my $call_f = "SELECT code || ' ' || ratelimit_remaining FROM apikeys.apikey_validate('$f_key')";
is(join(',', map { sql($node, $db, $call_f) } 1 .. 3), 'valid 1,valid 0,rate_limited 0',
	'f: a limit of 2 per hour: 2 pass, the 3rd is refused');
# from here on the state table has room for 100 windows (its minimum)
$node->append_conf('postgresql.conf', 'apikeys.max_ratelimit_states = 100');
$node->restart;
ok(defined wait_for_worker($node, $db, 10), 'f: the worker is back after the restart');
is(sql($node, $db, 'SHOW apikeys.max_ratelimit_states'), '100', 'apikeys.max_ratelimit_states is 100');
is(sql($node, $db, $call_f), 'valid 1',
	'f: after a restart the window is empty (counts are not persisted: the documented behaviour)');
is(sql($node, $db, "SELECT count(*) FROM apikeys.apikey_ratelimits('rl_f')"), '1', 'f: the limit itself is kept');

# ---------------------------------------------------------------------------
# e. The state table filled past its size
# ---------------------------------------------------------------------------
# 300 keys of owner rl_e, each with its own limit of 1 per 3 s
sql($node, $db, q{
	INSERT INTO public.rl_keys
	SELECT 'e' || g, k.id, k.key FROM generate_series(1, 300) AS g,
	       LATERAL apikeys.apikey_create(owner => 'rl_e', name => 'e' || g) AS k;
	SELECT count(apikeys.apikey_ratelimit_set('one', 1, '3 seconds', key_id => id))
	  FROM public.rl_keys WHERE label LIKE 'e%'});
# an empty state table: restart again (f's window holds a state for an hour)
$node->restart;
ok(defined wait_for_worker($node, $db, 10), 'e: the worker is back after the restart');
my $log_offset = -s $node->logfile;
# pass(P, ORDER) -- validates the 300 keys once each, in ORDER (ASC or DESC
# of their number), logging code and how long each call took
sql($node, $db, q{
	CREATE TABLE public.e_calls (pass int, n int, code text, lim int, took interval);
	CREATE FUNCTION public.e_pass(p int, descending boolean) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		r record;
		t0 timestamptz;
		v apikeys.validation;
	BEGIN
		FOR r IN SELECT substr(label, 2)::int AS n, key FROM public.rl_keys WHERE label LIKE 'e%'
		         ORDER BY CASE WHEN descending THEN -substr(label, 2)::int ELSE substr(label, 2)::int END
		LOOP
			t0 := clock_timestamp();
			v := apikeys.apikey_validate(r.key);
			INSERT INTO public.e_calls VALUES (p, r.n, v.code, v.ratelimit_limit, clock_timestamp() - t0);
		END LOOP;
	END
	$$});
# passes 1 and 2 back to back (well within the 3 s windows), under a
# statement timeout so that a stall fails the test
my ($e_ok, $e_out, $e_took) = timed($node, $db, 'SELECT public.e_pass(1, false), public.e_pass(2, false)', 30);
ok($e_ok, sprintf('e: 600 validations with the state table full returned (%.2fs)', $e_took)) or diag($e_out);
my $longest = sql($node, $db, 'SELECT round(extract(epoch FROM max(took))::numeric * 1000, 2) FROM public.e_calls');
note("e: the longest validation took $longest ms");
ok($longest < 1000, "e: no validation waited: the longest took $longest ms (< 1 s)");
is(sql($node, $db, q{SELECT string_agg(code || ':' || c, ',' ORDER BY code)
	FROM (SELECT code, count(*) AS c FROM public.e_calls WHERE pass = 1 GROUP BY code) s}),
	'valid:300', 'e: first pass: all 300 valid');
is(sql($node, $db, q{SELECT string_agg(code || ':' || c, ',' ORDER BY code)
	FROM (SELECT code, count(*) AS c FROM public.e_calls WHERE pass = 2 GROUP BY code) s}),
	'rate_limited:100,valid:200',
	'e: second pass: the 100 limits that got a window are counted (rate_limited), the other 200 are not (valid)');
is(sql($node, $db, "SELECT min(n) || '-' || max(n) FROM public.e_calls WHERE pass = 2 AND code = 'rate_limited'"),
	'1-100', 'e: the counted limits are the first 100 validated');
is(sql($node, $db, "SELECT count(*) FILTER (WHERE lim = 1 AND n <= 100) || ' ' || count(*) FILTER (WHERE lim IS NULL AND n > 100)
	FROM public.e_calls WHERE pass IN (1, 2)"),
	'200 400', 'e: the counted calls report their limit; the uncounted ones report none (NULL, not 0)');
is(sql($node, $db, 'SELECT 1'), '1', 'e: the server stays up');
check_no_crash($node, $log_offset, 'e: no server process crashed');

# the windows pass (3 s + a sub-bucket), then the worker's purge at the flush
usleep(3_700_000);
flush_usage($node, $db, 'e: flush_usage() (the worker purges the windows that passed)');
($e_ok, $e_out, $e_took) = timed($node, $db, 'SELECT public.e_pass(3, true), public.e_pass(4, true)', 30);
ok($e_ok, sprintf('e: 600 more validations returned (%.2fs)', $e_took)) or diag($e_out);
is(sql($node, $db, q{SELECT string_agg(code || ':' || c, ',' ORDER BY code)
	FROM (SELECT code, count(*) AS c FROM public.e_calls WHERE pass = 4 GROUP BY code) s}),
	'rate_limited:100,valid:200',
	'e: after the purge, 100 limits are counted again');
is(sql($node, $db, "SELECT min(n) || '-' || max(n) FROM public.e_calls WHERE pass = 4 AND code = 'rate_limited'"),
	'201-300', 'e: ... the first 100 validated this time (keys 300 down to 201, uncounted before)');
$longest = sql($node, $db, 'SELECT round(extract(epoch FROM max(took))::numeric * 1000, 2) FROM public.e_calls');
note("e: the longest of the 1200 validations took $longest ms");
check_no_crash($node, 0, 'no server process crashed');

$node->stop;
done_testing();
