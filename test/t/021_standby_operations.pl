# 021_standby_operations.pl -- a hot standby's worker among the things an
# operator does (SPEC 13, issue 15).
#
# 1. A standby whose counter table is full: while it ships, validations
# wait for room (briefly) and nothing is dropped; while it cannot ship.
# A primary makes a validation wait for a flush when every counter entry
# holds unflushed counts; a standby's counts leave only over the network, so
# there a validation must never wait: the counts that find no room are
# dropped, and apikey_standby_status() says how many.  What was kept reaches
# the primary, exactly, once it is back.
#
# 2. DROP DATABASE on the primary, of a database the standby ships to: the
# shipping connection must not hold a session there between intervals (the
# DROP would fail), and the standby's worker must leave the database when
# the DROP is replayed (replay waits for every session in it).
#
# 3. Two standbys from one data directory copied cold (with its shutdown
# dump, hence its source id): the primary must not take the second one's
# batches for the first one's, answered as already applied.
#
# 4. Promotion while a batch is on its way to the old primary, which is
# still running: the batch commits there after the promotion, on a
# timeline the promoted server never sees; it must count there anyway.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $db = 'postgres';
my $out;
my ($primary, $standby) = streaming_pair($db, [], ['apikeys.max_tracked_keys = 100']);

my @keys = create_keys($primary, $db, 'full', 150);
sql($primary, $db, q{CREATE TABLE public.busy_keys AS
	SELECT g AS n, k.key FROM generate_series(1, 150) AS g,
	LATERAL apikeys.apikey_create(owner => 'busy', name => 'busy ' || g) AS k});
$primary->wait_for_catchup($standby);

# with the primary reachable, a full table waits for the worker to ship
# (as a primary's waits for a flush), and drops nothing
$out = sql($standby, $db, q{
	SELECT count(*) FILTER (WHERE (apikeys.apikey_validate(t.key)).valid)
	  FROM (SELECT key FROM public.busy_keys ORDER BY n) t});
is($out, '150', '150 distinct keys validate on a standby that tracks 100');
is(sql($standby, $db, 'SELECT dropped_calls FROM apikeys.apikey_standby_status()'), '0',
	'with its primary reachable, the standby drops none of them');
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', 'and ships them');
is(sql($primary, $db, q{SELECT sum(u.calls) FROM apikeys.usage u JOIN apikeys.keys k ON k.id = u.key_id
	WHERE k.owner = 'busy'}), '150', 'the primary has all 150');

# the standby cannot ship: its primary is down
$primary->stop('fast');

# 150 distinct keys, one validation each, in one session: none may wait
my $t0 = time;
$out = sql($standby, $db, q{
	SELECT count(*) FILTER (WHERE (apikeys.apikey_validate(t.key)).valid)
	  FROM (SELECT key FROM public.test_keys ORDER BY n) t});
my $took = time - $t0;
is($out, '150', 'the standby answers all 150 validations with its primary down');
# waiting for room each time would take a second per count that finds none
cmp_ok($took, '<', 25, sprintf('and they do not wait on the unreachable primary (all 150 took %.2fs)', $took));

my $status = sql($standby, $db, q{
	SELECT pending_keys || ' ' || pending_calls || ' ' || dropped_calls
	  FROM apikeys.apikey_standby_status()});
is($status, '100 100 50',
	'100 key-days are kept, pending; the 50 with no room are dropped and reported');

# flush_usage() says at once that the ship failed (it used to wait 30 s)
$t0 = time;
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 'f',
	'flush_usage() on the standby answers false while it cannot ship');
$took = time - $t0;
cmp_ok($took, '<', 20, sprintf('after the first failed attempt (%.2fs), not at its 30 s limit', $took));

# a key already counted still counts: only new key-days find no room
$out = sql($standby, $db, q{SELECT count(*) FROM (SELECT apikeys.apikey_validate(key)
	FROM public.test_keys, generate_series(1, 3) WHERE n <= 10) s});
is(sql($standby, $db, 'SELECT pending_calls || \' \' || dropped_calls FROM apikeys.apikey_standby_status()'),
	'130 50', 'further calls of kept keys are counted, nothing more is dropped');

# back: what was kept arrives, exactly
$primary->start;
my $done = wait_until($standby, $db,
	'SELECT pending_calls FROM apikeys.apikey_standby_status()', '0', 60);
ok(defined $done, 'the kept counts are shipped once the primary is back');
my $full_usage = q{FROM apikeys.usage u JOIN apikeys.keys k ON k.id = u.key_id WHERE k.owner = 'full'};
is(sql($primary, $db, "SELECT sum(calls) $full_usage"), '130',
	'the primary has the 130 kept calls');
is(sql($primary, $db, "SELECT count(*) $full_usage"), '100',
	'for the 100 key-days that found room');

# with room again, new key-days are counted
sql($standby, $db, 'SELECT apikeys.apikey_validate(key) FROM public.test_keys WHERE n > 140');
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', 'flush_usage() on the standby ships');
is(sql($primary, $db, "SELECT sum(calls) $full_usage"), '140',
	'the primary has the new 10 calls too');

# ---------------------------------------------------------------------------
# 2. DROP DATABASE of a database a standby ships to
# ---------------------------------------------------------------------------
sql($primary, $db, 'CREATE DATABASE shipped');
create_extension($primary, 'shipped');
my (undef, $key) = create_key($primary, 'shipped', 'gone', 'soon');
$primary->wait_for_catchup($standby);
is(validate_n($standby, 'shipped', $key, 3), 'valid', 'a key validates on the standby');
is(sql($standby, 'shipped', 'SELECT apikeys.flush_usage()'), 't', 'and its calls are shipped');
is(sql($primary, 'shipped', 'SELECT sum(calls) FROM apikeys.usage'), '3', 'the primary has them');
is(sql($standby, 'shipped', 'SELECT connected FROM apikeys.apikey_standby_status()'), 'f',
	'no shipping connection stays open between intervals');

my ($ret, $o, $err) = $primary->psql($db, 'DROP DATABASE shipped', timeout => 60);
is($ret, 0, 'DROP DATABASE on the primary works while the standby ships to it')
  or diag($err);
my $lsn = sql($primary, $db, 'SELECT pg_current_wal_lsn()');
$done = wait_until($standby, $db,
	"SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn", 't', 60);
ok(defined $done, sprintf('the standby replays the DROP (%.2fs): its worker left the database',
	$done // -1));
is(sql($standby, $db, "SELECT count(*) FROM pg_database WHERE datname = 'shipped'"), '0',
	'the database is gone on the standby too');
is(validate_n($standby, $db, $keys[0][1], 1), 'valid', 'the standby goes on validating elsewhere');

# the same while the standby waits to replay its batch's commit (replay
# paused): it must hold no session on the primary meanwhile, and must let
# the replay of the DROP through at once when replay resumes (replaying
# DROP DATABASE waits for every process to absorb a barrier)
sql($primary, $db, 'CREATE DATABASE shipped2');
create_extension($primary, 'shipped2');
(undef, $key) = create_key($primary, 'shipped2', 'gone', 'paused');
$primary->wait_for_catchup($standby);
sql($standby, $db, 'SELECT pg_wal_replay_pause()');
is(validate_n($standby, 'shipped2', $key, 3), 'valid', 'with replay paused, a key validates');
$done = wait_until($primary, 'shipped2', 'SELECT coalesce(sum(calls), 0) FROM apikeys.usage', '3', 30);
ok(defined $done, 'its batch reaches the primary (the standby waits to replay its commit)');
($ret, $o, $err) = $primary->psql($db, 'DROP DATABASE shipped2', timeout => 60);
is($ret, 0, 'DROP DATABASE on the primary works meanwhile: no shipping session is left there')
  or diag($err);
$lsn = sql($primary, $db, 'SELECT pg_current_wal_lsn()');
sql($standby, $db, 'SELECT pg_wal_replay_resume()');
$t0 = time;
$done = wait_until($standby, $db, "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn", 't', 60);
$took = time - $t0;
ok(defined $done, 'replay resumes and replays the DROP');
# the worker waiting for replay used to hold it up until its own 30 s timeout
cmp_ok($took, '<', 15, sprintf('without waiting for the worker (%.2fs)', $took));

# ---------------------------------------------------------------------------
# 2b. A batch the primary applied, still unconfirmed at a clean stop, and a
# restart with a smaller table that cannot restore all of it: sent again
# with fewer counters, it must still be a duplicate, not applied again
# ---------------------------------------------------------------------------
$standby->append_conf('postgresql.conf', 'apikeys.max_tracked_keys = 200');
$standby->restart;
sql($primary, $db, q{CREATE TABLE public.shrink_keys AS
	SELECT g AS n, k.key FROM generate_series(1, 150) AS g,
	LATERAL apikeys.apikey_create(owner => 'shrink', name => 'shrink ' || g) AS k});
$primary->wait_for_catchup($standby);
my $shrunk = q{SELECT coalesce(sum(u.calls), 0) FROM apikeys.usage u
	JOIN apikeys.keys k ON k.id = u.key_id WHERE k.owner = 'shrink'};
sql($standby, $db, 'SELECT count(apikeys.apikey_validate(key)) FROM public.shrink_keys');
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', '150 keys validated and shipped');
sql($standby, $db, 'SELECT pg_wal_replay_pause()');
sql($standby, $db, 'SELECT count(apikeys.apikey_validate(key)) FROM public.shrink_keys');
$done = wait_until($primary, $db, $shrunk, '300', 30);
ok(defined $done, 'with replay paused, their second calls reach the primary (unconfirmed on the standby)');
$standby->stop('fast');
$standby->append_conf('postgresql.conf', 'apikeys.max_tracked_keys = 100');
$standby->start;
ok(slurp_file($standby->logfile) =~ /dropped the unflushed counts of \d+ keys at startup/,
	'the restart could not restore all its counters (a table of 100)');
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', 'the standby ships');
sleep(1);
is(sql($primary, $db, $shrunk), '300', 'the batch sent again was a duplicate: 300 calls, not 400');

# ---------------------------------------------------------------------------
# 3. Two standbys from one cold copy: one source id, found out
# ---------------------------------------------------------------------------
# nothing pending at the stop, so that neither ships before the check below
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', 'the standby has shipped everything');
my $source = sql($standby, $db, 'SELECT source FROM apikeys.apikey_standby_status()');
$standby->stop('fast');
$standby->backup_fs_cold('cold');
my $twin = PostgreSQL::Test::Cluster->new('twin');
# the copy keeps the standby's settings: it streams from the primary too
$twin->init_from_backup($standby, 'cold');
$standby->start;
$twin->start;
is(sql($standby, $db, 'SELECT source FROM apikeys.apikey_standby_status()'), $source,
	'the standby keeps its source id across the restart');
is(sql($twin, $db, 'SELECT source FROM apikeys.apikey_standby_status()'), $source,
	'and its cold copy starts with the same one');
my ($twin_id, $twin_key) = create_key($primary, $db, 'twins', 'twin key');
$primary->wait_for_catchup($standby);
$primary->wait_for_catchup($twin);

# the worst case first: both send their first batch (one number, one
# source), neither gets an answer (the primary holds them, then restarts),
# and both send it again
my $lock = start_psql($primary, $db,
	'BEGIN; LOCK TABLE apikeys.standby_batches IN EXCLUSIVE MODE; SELECT pg_sleep(30); COMMIT;');
wait_until($primary, $db, q{SELECT count(*) FROM pg_locks
	WHERE relation = 'apikeys.standby_batches'::regclass AND mode = 'ExclusiveLock' AND granted},
	'1', 30);
validate_n($standby, $db, $twin_key, 10);
validate_n($twin, $db, $twin_key, 7);
$done = wait_until($primary, $db, q{SELECT count(*) FROM pg_stat_activity
	WHERE application_name = 'apikeys usage shipping' AND wait_event_type = 'Lock'}, '2', 30);
ok(defined $done, 'both send their batch, and wait on the primary');
$primary->restart;
finish_psql($lock);
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', 'after a primary restart the standby ships');
is(sql($twin, $db, 'SELECT apikeys.flush_usage()'), 't', 'and so does its twin');
is(sql($primary, $db, "SELECT sum(calls) FROM apikeys.usage WHERE key_id = '$twin_id'"), '17',
	'the primary has the calls of both (10 + 7): the batch sent again by the second is a conflict, not a duplicate');

for my $round (1 .. 8)
{
	validate_n($standby, $db, $twin_key, 10);
	is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', "round $round: the standby ships");
	validate_n($twin, $db, $twin_key, 7);
	is(sql($twin, $db, 'SELECT apikeys.flush_usage()'), 't', "round $round: its twin ships");
}
is(sql($primary, $db, "SELECT sum(calls) FROM apikeys.usage WHERE key_id = '$twin_id'"), '153',
	'the primary has every call of both (17 + 8 x 10 + 8 x 7)');
# Their batch numbers carry random low bits: the primary applies whichever
# comes with a higher number, and finds a conflict in the first that comes
# lower (once in two, at each number both send), when that one takes a new
# source id.
my $switched = sql($twin, $db, 'SELECT source FROM apikeys.apikey_standby_status()')
	ne sql($standby, $db, 'SELECT source FROM apikeys.apikey_standby_status()');
my $warned = (slurp_file($standby->logfile) . slurp_file($twin->logfile)
	  =~ /WARNING:  apikeys: the primary has batch \d+ of source \S+ from another server/) ? 1 : 0;
is($warned, $switched ? 1 : 0, 'a source id changed exactly when a conflict was logged');
diag($switched ? 'one twin took a new source id' : 'the twins never sent a lower number (1 run in about 500)');
$twin->stop('fast');

# ---------------------------------------------------------------------------
# 4. Promotion while a batch waits on the old primary
# ---------------------------------------------------------------------------
my ($p_id, $p_key) = create_key($primary, $db, 'switch', 'in flight');
$primary->wait_for_catchup($standby);
# the old primary holds the batches' bookkeeping row of every standby
my $holder = start_psql($primary, $db,
	'BEGIN; SELECT 1 FROM apikeys.standby_batches FOR UPDATE; SELECT pg_sleep(6); COMMIT;');
is(validate_n($standby, $db, $p_key, 10), 'valid', 'ten validations on the standby');
$done = wait_until($primary, $db, q{SELECT count(*) FROM pg_stat_activity
	WHERE application_name = 'apikeys usage shipping' AND wait_event_type = 'Lock'}, '1', 30);
ok(defined $done, 'their batch waits on the old primary');
$standby->promote;
my ($hok) = finish_psql($holder);
ok($hok, 'the old primary lets the batch commit, after the promotion');
$done = wait_until($primary, $db,
	"SELECT coalesce(sum(calls), 0) FROM apikeys.usage WHERE key_id = '$p_id'", '10', 30);
ok(defined $done, 'the old primary applied the batch (on its own timeline)');
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', 'the promoted server flushes');
is(sql($standby, $db, "SELECT coalesce(sum(calls), 0) FROM apikeys.usage WHERE key_id = '$p_id'"),
	'10', 'and has the ten calls: a batch confirmed after promotion is not lost');
sleep(1);
is(sql($standby, $db, "SELECT coalesce(sum(calls), 0) FROM apikeys.usage WHERE key_id = '$p_id'"),
	'10', 'once');

check_no_crash($standby);
done_testing();
