# 019_standby_revocation.pl -- revocation, rotation and expiry reach a hot
# standby's validations, cached or not, exactly when the commit is replayed
# (SPEC 3 apikey_revoke / apikey_rotate, SPEC 13; issue 15).
#
# One long-lived standby session S validates keys throughout, so they sit in
# S's per-backend key cache.  Whether a validation was answered from that
# cache is observable: a miss scans the index apikeys.keys_digest_key, a hit
# does not; probe() validates inside a transaction and reports the code and
# the number of scans of that index the validation made, from the backend's
# own statistics (0: cache hit, 1: read from the table).
#
#   1. revocation: S answers 'valid' from its cache; the primary revokes;
#      right after wait_for_catchup (replay) S's very next validation, and a
#      fresh session's, answer 'revoked'
#   2. rotation with a 2 s grace: after replay the cached old key is 'valid'
#      until the grace ends and 'expired' from then on (each answer checked
#      against the statement's start time), the successor validates
#   3. expiry: a cached key whose expires_at the primary moves 3 s ahead is
#      'valid' before and 'expired' after it; the primary worker's expiry
#      pass (expired_at, audit event) replays to the standby
#   4. visibility follows replay, not receipt: with replay paused the
#      revoking commit is received on the standby but S (from its cache) and
#      a fresh session still answer 'valid'; once replay resumes, 'revoked'
#   5. replay to visibility: 50 revocations, each timed from the primary's
#      commit timestamp to the first 'revoked' seen by a standby session
#      polling in a loop; median and max are reported with diag (only the
#      outcome is asserted), as is the time wait_for_catchup takes (it
#      includes the standby's next status report, so set-up steps wait with
#      replayed() instead, which asks the standby)
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use List::Util qw(max);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $db = 'postgres';
my $n_timed = 50;        # revocations timed in part 5
my $T0 = time;

my ($primary, $standby) = streaming_pair($db,
	[
		# the expiry pass of part 3 runs every second
		'apikeys.expiry_interval = 1',
		# part 5 times each revocation from its commit timestamp
		'track_commit_timestamp = on',
		# no ANALYZE of apikeys.keys (a relcache invalidation) may empty S's
		# cache at a moment the test expects a hit, and no VACUUM may remove
		# rows a standby query still sees
		'autovacuum = off',
	],
	[
		# part 5 polls in one long statement: pruning on the primary must
		# not conflict with its snapshot (and so delay replay)
		'hot_standby_feedback = on', 'wal_receiver_status_interval = 1s',
	]);

# every wait_for_catchup of the test, timed
my @catchup;
sub catchup
{
	my $t0 = time;
	$primary->wait_for_catchup($standby, 'replay', $primary->lsn('write'));
	push @catchup, time - $t0;
	return;
}

# replayed() -- wait until the standby has replayed all the primary's WAL,
# seen from the standby (wait_for_catchup also waits for the standby to
# report it, up to wal_receiver_status_interval later): for set-up steps
sub replayed
{
	my $lsn = $primary->lsn('write');
	defined wait_until($standby, $db, "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn", 't', 60)
	  or die "the standby did not replay up to $lsn";
	return;
}

sub median
{
	my @s = sort { $a <=> $b } @_;
	return @s % 2 ? $s[$#s / 2] : ($s[@s / 2 - 1] + $s[@s / 2]) / 2;
}

# the long-lived standby session
my $s = $standby->background_psql($db, timeout => 60);
$s->set_query_timer_restart;
my $s_pid = $s->query_safe('SELECT pg_backend_pid()');

# probe(SESSION, KEY, [EXTRA]) -- validate KEY in SESSION: "code scans",
# where scans is the number of scans of apikeys.keys' digest index the
# validation made (0: answered from the backend's cache, 1: read from the
# table); EXTRA (an SQL expression over the result row v) is appended after
# the code.
sub probe
{
	my ($session, $key, $extra) = @_;
	$extra = defined $extra ? " || ' ' || ($extra)" : '';
	my $out = $session->query_safe(qq{BEGIN;
SELECT pg_stat_get_xact_numscans('apikeys.keys_digest_key'::regclass) AS scans_before \\gset
SELECT v.code$extra FROM apikeys.apikey_validate('$key') AS v;
SELECT pg_stat_get_xact_numscans('apikeys.keys_digest_key'::regclass) - :scans_before;
COMMIT;});
	$out =~ s/\n/ /g;
	return $out;
}

# ----------------------------------------------------------------------
# The probe can tell a cache hit from a read
# ----------------------------------------------------------------------
my ($a_id, $a_key) = create_key($primary, $db, 'acme', 'revoked on the primary');
replayed();
my $nocache = $standby->background_psql($db, timeout => 60);
$nocache->query_safe('SET apikeys.backend_cache_keys = 0');
is(probe($nocache, $a_key) . ', ' . probe($nocache, $a_key), 'valid 1, valid 1',
	'with the cache off every validation reads apikeys.keys (the probe sees the index scan)');
$nocache->quit;
is(probe($s, $a_key), 'valid 1', 'S: the first validation reads the key');
is(probe($s, $a_key), 'valid 0', 'S: the next one is answered from its cache');

# ----------------------------------------------------------------------
# 1. revocation
# ----------------------------------------------------------------------
note(sprintf('part 1 at %.1f s', time - $T0));
is(sql($primary, $db, "SELECT apikeys.apikey_revoke('$a_id')"), 't', 'the primary revokes');
catchup();
is(probe($s, $a_key), 'revoked 1',
	"S's very next validation after replay is 'revoked' (its cached entry was dropped)");
is(probe($s, $a_key), 'revoked 0', '... and stays so from its cache');
is(sql($standby, $db, "SELECT code FROM apikeys.apikey_validate('$a_key')"), 'revoked',
	"a fresh standby session gets 'revoked'");

# ----------------------------------------------------------------------
# 2. rotation with a grace
# ----------------------------------------------------------------------
note(sprintf('part 2 at %.1f s', time - $T0));
my ($b_id, $b_key) = create_key($primary, $db, 'acme', 'rotated on the primary');
replayed();
probe($s, $b_key);
is(probe($s, $b_key), 'valid 0', 'S has the key to rotate in its cache');
my ($b2_id, $b2_key) = split / /, sql($primary, $db,
	"SELECT id || ' ' || key FROM apikeys.apikey_rotate('$b_id', grace => '2 seconds')");
# (the standby-side wait: a slow wait_for_catchup could eat the grace)
replayed();
my $old_until = sql($standby, $db, qq{
	SELECT expires_at FROM apikeys.keys
	 WHERE id = '$b_id' AND expires_at <= now() + interval '2 seconds'});
like($old_until, qr/^\d{4}-/, "the rotation set the old key's expires_at to the grace's end ($old_until)");
# answers as of the statement's start: "valid before" the grace ends,
# "expired after"; a stale cache would say "valid after"
my $grace_probe = "CASE WHEN statement_timestamp() >= '$old_until'::timestamptz THEN 'after' ELSE 'before' END";
my $first = probe($s, $b_key, $grace_probe);
is($first, 'valid before 1', "after replay S re-reads the old key: 'valid' during the grace");
is(probe($s, $b2_key), 'valid 1', 'the successor validates in S');
is(sql($standby, $db, "SELECT code FROM apikeys.apikey_validate('$b2_key')"), 'valid',
	'... and in a fresh standby session');
my (%seen, @wrong);
my $t0 = time;
while (time - $t0 < 10)
{
	my $out = probe($s, $b_key, $grace_probe);
	$out =~ s/ \d$//;
	$seen{$out}++;
	push @wrong, $out unless $out eq 'valid before' || $out eq 'expired after';
	last if $out eq 'expired after';
	usleep(50_000);
}
is_deeply(\@wrong, [], "S's answer for the old key always matches the grace's end");
ok($seen{'expired after'}, "S sees the old key 'expired' once the grace ended (SPEC 3: \"then expires\")");
is(sql($standby, $db, "SELECT code FROM apikeys.apikey_validate('$b_key')"), 'expired',
	"a fresh standby session gets 'expired' for the old key");
is(probe($s, $b2_key), 'valid 0', 'the successor is still valid in S');

# ----------------------------------------------------------------------
# 3. expiry
# ----------------------------------------------------------------------
note(sprintf('part 3 at %.1f s', time - $T0));
# apikey_create's lifetime is whole days (expires_in_days 1-365): make the
# key, then move its expires_at a few seconds ahead on the primary (a change
# of a column validation reads, so it invalidates every cache)
my ($c_id, $c_key) = create_key($primary, $db, 'acme', 'expiring', 'expires_in_days => 1');
replayed();
probe($s, $c_key);
is(probe($s, $c_key, 'v.expires_at > now() + interval \'23 hours\''), 'valid true 0',
	'S has the key with its one-day lifetime in its cache');
my $expires_at = sql($primary, $db, qq{
	UPDATE apikeys.keys SET expires_at = clock_timestamp() + interval '3 seconds'
	 WHERE id = '$c_id' RETURNING expires_at});
replayed();
my $expiry_probe = "CASE WHEN statement_timestamp() >= '$expires_at'::timestamptz THEN 'after' ELSE 'before' END";
is(probe($s, $c_key, $expiry_probe), 'valid before 1',
	"after replay S re-reads the key: 'valid' before its new expires_at");
(%seen, @wrong) = ();
$t0 = time;
while (time - $t0 < 10)
{
	my $out = probe($s, $c_key, $expiry_probe);
	$out =~ s/ \d$//;
	$seen{$out}++;
	push @wrong, $out unless $out eq 'valid before' || $out eq 'expired after';
	last if $out eq 'expired after';
	usleep(50_000);
}
is_deeply(\@wrong, [], "S's answer always matches expires_at");
ok($seen{'expired after'}, "S sees the key 'expired' after expires_at, before any expiry pass replayed");
ok(defined wait_until($primary, $db,
		"SELECT expired_at IS NOT NULL FROM apikeys.keys WHERE id = '$c_id'", 't', 10),
	"the primary worker's expiry pass marks the key expired");
my $expired_at = sql($primary, $db, "SELECT expired_at FROM apikeys.keys WHERE id = '$c_id'");
catchup();
is(sql($standby, $db, qq{
	SELECT k.expired_at || ' ' || l.status || ' ' ||
	       (SELECT count(*) FROM apikeys.audit AS a WHERE a.key_id = k.id AND a.event = 'expired')
	  FROM apikeys.keys AS k, apikeys.apikey_list('acme') AS l
	 WHERE k.id = '$c_id' AND l.id = k.id}),
	"$expired_at expired 1",
	"the standby's row carries the primary's expired_at, lists 'expired', with the audit event");
like(probe($s, $c_key), qr/^expired [01]$/, "S still answers 'expired'");

# ----------------------------------------------------------------------
# 4. visibility follows replay, not receipt
# ----------------------------------------------------------------------
note(sprintf('part 4 at %.1f s', time - $T0));
my ($d_id, $d_key) = create_key($primary, $db, 'acme', 'revoked while replay is paused');
replayed();
probe($s, $d_key);
is(probe($s, $d_key), 'valid 0', 'S has the key in its cache');
sql($standby, $db, 'SELECT pg_wal_replay_pause()');
is(sql($primary, $db, "SELECT apikeys.apikey_revoke('$d_id')"), 't', 'the primary revokes');
my $lsn = $primary->lsn('write');
ok(defined wait_until($standby, $db,
		"SELECT pg_last_wal_receive_lsn() >= '$lsn'::pg_lsn", 't', 20),
	'the standby has received the revoking commit');
ok(defined wait_until($standby, $db,
		"SELECT pg_get_wal_replay_pause_state() || ' ' || (pg_last_wal_replay_lsn() < '$lsn'::pg_lsn)",
		'paused true', 20),
	'... and has not replayed it (replay is paused)');
is(probe($s, $d_key), 'valid 0', "S answers 'valid' from its cache while the commit is unreplayed");
is(sql($standby, $db, "SELECT code FROM apikeys.apikey_validate('$d_key')"), 'valid',
	"so does a fresh session reading the table");
sql($standby, $db, 'SELECT pg_wal_replay_resume()');
catchup();
is(probe($s, $d_key), 'revoked 1', "once replayed, S's next validation is 'revoked'");
is(sql($standby, $db, "SELECT code FROM apikeys.apikey_validate('$d_key')"), 'revoked',
	"... and a fresh session's");

# ----------------------------------------------------------------------
# 5. replay to visibility, timed
# ----------------------------------------------------------------------
note(sprintf('part 5 at %.1f s', time - $T0));
# Keys n = 1..55 in public.test_keys(n, id, key).  A standby session polls
# key n (n <= 50) in a tight loop until it is no longer 'valid', notes the
# time, then goes on with key n+1; meanwhile the primary revokes keys 1..50
# one transaction at a time, 50 ms apart.  Each is timed from its commit
# timestamp (the xmin of its 'revoked' audit row) to the poller's note.
my @keys = create_keys($primary, $db, 'timed', $n_timed + 5);
sql($primary, $db, q{
	CREATE FUNCTION public.await_revocations(upto int, cap interval)
	RETURNS TABLE (n int, code text, seen numeric, polls bigint)
	LANGUAGE plpgsql AS $$
	DECLARE
		deadline timestamptz := clock_timestamp() + cap;
		k text;
	BEGIN
		FOR n, k IN SELECT t.n, t.key FROM public.test_keys AS t
		             WHERE t.n <= upto ORDER BY t.n LOOP
			polls := 0;
			LOOP
				SELECT v.code INTO code FROM apikeys.apikey_validate(k) AS v;
				polls := polls + 1;
				EXIT WHEN code <> 'valid' OR clock_timestamp() > deadline;
			END LOOP;
			seen := extract(epoch FROM clock_timestamp());
			RETURN NEXT;
		END LOOP;
	END
	$$});
replayed();
my $poller = start_psql($standby, $db,
	"SET statement_timeout = '40s'; SELECT n || ' ' || code || ' ' || seen || ' ' || polls FROM public.await_revocations($n_timed, '30 seconds')");
ok(defined wait_until($standby, $db,
		"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%await\\_revocations($n_timed,%' AND state = 'active' AND pid <> pg_backend_pid()",
		'1', 20),
	'the standby poller is running');
usleep(100_000);
sql($primary, $db, qq{
	DO \$\$
	DECLARE
		r record;
	BEGIN
		FOR r IN SELECT t.id FROM public.test_keys AS t WHERE t.n <= $n_timed ORDER BY t.n LOOP
			PERFORM apikeys.apikey_revoke(r.id);
			COMMIT;
			PERFORM pg_sleep(0.05);
		END LOOP;
	END
	\$\$});
my ($ok, $out, $err) = finish_psql($poller);
ok($ok, 'the standby poller finished') or diag($err);
my %commit = map { split / / } split /\n/, sql($primary, $db, qq{
	SELECT t.n || ' ' || extract(epoch FROM pg_xact_commit_timestamp(a.xmin))
	  FROM public.test_keys AS t
	  JOIN apikeys.audit AS a ON a.key_id = t.id AND a.event = 'revoked'
	 WHERE t.n <= $n_timed});
is(scalar(keys %commit), $n_timed, "the primary committed $n_timed revocations, with commit timestamps");
my (@lag, %codes, $first_poll);
for (split /\n/, $out)
{
	my ($n, $code, $seen, $polls) = split / /;
	$codes{$code}++;
	next unless $code eq 'revoked' && defined $commit{$n};
	push @lag, $seen - $commit{$n};
	$first_poll++ if $polls == 1;
}
is_deeply(\%codes, { revoked => $n_timed },
	"all $n_timed keys were seen 'revoked' by the polling standby session");
diag(sprintf('replay to visibility over %d revocations: median %.2f ms, max %.2f ms, min %.2f ms'
	  . ' (primary commit timestamp to the first standby validation answering revoked;'
	  . ' %d already revoked at the first poll)',
	scalar @lag, 1000 * median(@lag), 1000 * max(@lag), 1000 * (sort { $a <=> $b } @lag)[0],
	$first_poll // 0)) if @lag;

# wait_for_catchup, timed after single revocations
my @catchup_timed;
for my $k (@keys[ $n_timed .. $n_timed + 4 ])
{
	sql($primary, $db, "SELECT apikeys.apikey_revoke('$k->[0]')");
	my $t = time;
	catchup();
	push @catchup_timed, time - $t;
	is(sql($standby, $db, "SELECT code FROM apikeys.apikey_validate('$k->[1]')"), 'revoked',
		"revoked on the standby after wait_for_catchup ($k->[0])");
}
diag(sprintf('wait_for_catchup (replay) after a single revocation: median %.1f ms, max %.1f ms'
	  . ' (%d runs); over all %d catch-ups of the test: median %.1f ms, max %.1f ms',
	1000 * median(@catchup_timed), 1000 * max(@catchup_timed), scalar @catchup_timed,
	scalar @catchup, 1000 * median(@catchup), 1000 * max(@catchup)));

# S was one backend throughout
is($s->query_safe('SELECT pg_backend_pid()'), $s_pid, 'S was one session throughout');
$s->quit;
check_no_crash($primary, undef, 'no primary process crashed');
check_no_crash($standby, undef, 'no standby process crashed');
$standby->stop;
$primary->stop;
done_testing();
