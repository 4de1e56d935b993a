# 021_standby_operations.pl -- a hot standby's worker among the things an
# operator does (SPEC 13, issue 15).
#
# 1. A standby whose counter table is full while it cannot ship.
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
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', join("\n",
	"shared_preload_libraries = 'apikeys'", 'max_worker_processes = 16',
	"log_statement = 'none'", 'apikeys.flush_interval = 200'));
$primary->start;
create_extension($primary, $db);
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->append_conf('postgresql.conf', 'apikeys.max_tracked_keys = 100');
$standby->start;

my @keys = create_keys($primary, $db, 'full', 150);
$primary->wait_for_catchup($standby);

# the standby cannot ship: its primary is down
$primary->stop('fast');

# 150 distinct keys, one validation each, in one session: none may wait
my $t0 = time;
my $out = sql($standby, $db, q{
	SELECT count(*) FILTER (WHERE (apikeys.apikey_validate(t.key)).valid)
	  FROM (SELECT key FROM public.test_keys ORDER BY n) t});
my $took = time - $t0;
is($out, '150', 'the standby answers all 150 validations with its primary down');
# waiting for room would take a second per count that finds none (50 s)
cmp_ok($took, '<', 25, sprintf('and none waits for room (all 150 took %.2fs)', $took));

my $status = sql($standby, $db, q{
	SELECT pending_keys || ' ' || pending_calls || ' ' || dropped_calls
	  FROM apikeys.apikey_standby_status()});
is($status, '100 100 50',
	'100 key-days are kept, pending; the 50 with no room are dropped and reported');

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
is(sql($primary, $db, 'SELECT sum(calls) FROM apikeys.usage'), '130',
	'the primary has the 130 kept calls');
is(sql($primary, $db, 'SELECT count(*) FROM apikeys.usage'), '100',
	'for the 100 key-days that found room');

# with room again, new key-days are counted
sql($standby, $db, 'SELECT apikeys.apikey_validate(key) FROM public.test_keys WHERE n > 140');
is(sql($standby, $db, 'SELECT apikeys.flush_usage()'), 't', 'flush_usage() on the standby ships');
is(sql($primary, $db, 'SELECT sum(calls) FROM apikeys.usage'), '140',
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

check_no_crash($standby);
done_testing();
