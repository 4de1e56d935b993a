# 008_reliability.pl -- one check per outage found by the 0.1 review
# (issue 10), each run the way it was found on a running server:
#
#   1. a counter table full of today's flushed entries: validating one more
#      key must not wait (it waited until UTC midnight)
#   2. a DROP DATABASE that is cancelled, times out, is refused for lack of
#      privilege, or fails because the database is in use must not leave the
#      database's worker stopped; an unprivileged one must not stop it at all
#   3. ALTER DATABASE ... ALLOW_CONNECTIONS false must not throw away the
#      database's unflushed counts (nor stop its flushes)
#   4. a restarted launcher adopts the running workers instead of starting
#      a duplicate for every database every second
#   5. pg_cancel_backend of a worker does not kill it
#   6. counts of a key created and validated in a transaction that is still
#      open are kept while the table fills, and reach the table once it
#      commits
#   7. the counts of a database whose extension is dropped while its worker
#      is down do not occupy the table forever; and with
#      synchronous_commit = off, a confirmed flush survives an immediate
#      shutdown
#
# Every statement that could hang runs with a statement_timeout, so a hang
# fails the test instead of the suite.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

# flush_interval is long: only flush_usage() and the pressure of a full
# table make a worker flush, so the tests control when counts move.
my $db = 'postgres';

# fresh_node(NAME) -- a node with a counter table of 100, the extension in
# postgres, and an unprivileged login role mallory.  Each part of the test
# gets its own, so that one outage cannot hide the next.
sub fresh_node
{
	my ($name) = @_;
	my $n = new_node($name,
		'apikeys.max_tracked_keys = 100',
		"apikeys.flush_interval = '1h'",
		'max_worker_processes = 24');
	create_extension($n, $db);
	ok(defined wait_for_worker($n, $db, 10), "$name: postgres has its worker");
	sql($n, $db, 'CREATE ROLE mallory LOGIN');
	return $n;
}
my $node = fresh_node('reliability_1');

# exact(DB, HASHREF) -- a test that apikeys.usage of DB holds exactly the
# expected key id => [calls, rejected] (summed over days).
sub exact
{
	my ($d, $want, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $got = usage_of($node, $d);
	my @wrong = grep { !$got->{$_} || "@{$got->{$_}}" ne "@{$want->{$_}}" } sort keys %$want;
	push @wrong, grep { !exists $want->{$_} } sort keys %$got;
	ok(!@wrong, $label)
	  or diag(scalar(@wrong) . ' keys wrong, e.g. ' . join(', ',
		map { "$_: got " . join('/', @{ $got->{$_} // ['none'] }) . ' want ' . join('/', @{ $want->{$_} // ['none'] }) }
		@wrong[ 0 .. ($#wrong < 4 ? $#wrong : 4) ]));
}

# bulk(DB, TABLE, OWNER, N) -- N keys in public.TABLE(n, id, key)
sub bulk
{
	my ($d, $table, $owner, $n) = @_;
	sql($node, $d, qq{
		CREATE TABLE public.$table (n int PRIMARY KEY, id text NOT NULL, key text NOT NULL);
		INSERT INTO public.$table
		SELECT g, k.id, k.key FROM generate_series(1, $n) g,
		       LATERAL apikeys.apikey_create(owner => '$owner', name => 'k' || g) k});
	return { map { (split /\|/)[0] => 1 } split /\n/, sql($node, $d, "SELECT id FROM public.$table") };
}

# ---------------------------------------------------------------------------
# 1. A table full of today's flushed entries
# ---------------------------------------------------------------------------
my $sec = -s $node->logfile;
my $ids = bulk($db, 'full_day', 'ada', 101);
my ($ok, $out, $took) = timed($node, $db,
	'SELECT count(*) FROM public.full_day, apikeys.apikey_validate(key) v WHERE n <= 100 AND v.valid', 20);
is($out, '100', '100 distinct keys validated (the table holds 100)');
flush_usage($node, $db, 'flush_usage() leaves 100 flushed entries of today');
($ok, $out, $took) = timed($node, $db,
	'SELECT v.code FROM public.full_day, apikeys.apikey_validate(key) v WHERE n = 101', 10);
ok($ok && $out eq 'valid',
	sprintf('key 101 validates at once with the table full of flushed entries (%.2fs)', $took))
  or diag("got: $out");
flush_usage($node, $db);
my %want = map { $_ => [ 1, 0 ] } keys %$ids;
exact($db, \%want, 'each of the 101 keys counted once');
check_no_crash($node, $sec, 'no crash around a full table of flushed entries');

# ---------------------------------------------------------------------------
# 2. DROP DATABASE never leaves a worker paused
# ---------------------------------------------------------------------------
$node->stop;
$node = fresh_node('reliability_2');
sql($node, $db, 'CREATE DATABASE t2');
create_extension($node, 't2');
my $w = wait_for_worker($node, 't2', 10);
ok(defined $w, 't2 has its worker');

{
	my ($r, $o, $e) = $node->psql($db, 'DROP DATABASE t2',
		extra_params => [ '-U', 'mallory' ], on_error_die => 0, timeout => 30);
	like($e, qr/must be owner of database t2/, 'an unprivileged DROP DATABASE is refused');
}
is(join(',', worker_pids($node, 't2')), $w, '... and did not stop the worker of t2');
{
	my ($r, $o, $e) = $node->psql($db, "SET statement_timeout = '3ms'; DROP DATABASE t2",
		extra_params => [ '-U', 'mallory' ], on_error_die => 0, timeout => 30);
	ok($r != 0, 'an unprivileged DROP DATABASE with statement_timeout 3ms fails');
}
ok(defined wait_for_worker($node, 't2', 10), '... and t2 has a worker afterwards');
($ok, $out) = timed($node, 't2', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', '... that flushes');

# A superuser's DROP DATABASE cancelled while it waits for the worker to
# stop.  (Cancelled later, inside PostgreSQL's own dropdb, it can leave the
# database invalid or dropped: that is PostgreSQL's behaviour, not ours.)
{
	my ($r, $o, $e) = $node->psql($db, "SET statement_timeout = '3ms'; DROP DATABASE t2",
		on_error_die => 0, timeout => 30);
	ok($r != 0 && $e =~ /statement timeout/,
		"a superuser's DROP DATABASE cancelled by statement_timeout 3ms fails")
	  or diag("exit $r: $e");
	my $back = wait_for_worker($node, 't2', 10);
	ok(defined $back, "... and t2 has a worker again");
	($ok, $out) = timed($node, 't2', 'SELECT apikeys.flush_usage()', 40);
	is($out, 't', '... that flushes');
}

# in use: DROP DATABASE waits 5 s for the other session, then fails
my $busy = start_psql($node, 't2', 'SELECT pg_sleep(8)');
usleep(300_000);
{
	my ($r, $o, $e) = $node->psql($db, 'DROP DATABASE t2', on_error_die => 0, timeout => 30);
	like($e, qr/is being accessed by other users/, 'DROP DATABASE of a database in use fails');
}
finish_psql($busy);
ok(defined wait_for_worker($node, 't2', 10), '... and t2 has a worker again');
($ok, $out) = timed($node, 't2', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', '... that flushes');

# a backend that dies (FATAL) in the middle of the pause: the worker is held
# in a flush that waits for a table lock, so DROP DATABASE waits for it to
# stop, and is terminated meanwhile
{
	my ($k2, $key2) = create_key($node, 't2', 'gus', 't2 key');
	($ok, $out) = timed($node, 't2',
		"SELECT count(*) FROM (SELECT apikeys.apikey_validate('$key2') v FROM generate_series(1, 3)) s", 20);
	is($out, '3', 't2: 3 calls to flush');
	my $locker = start_psql($node, 't2',
		'LOCK TABLE apikeys.usage IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(5)');
	usleep(300_000);
	my $flusher = start_psql($node, 't2', 'SELECT apikeys.flush_usage()');
	my $held = wait_until($node, $db, q{SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'apikeys worker' AND datname = 't2' AND wait_event_type = 'Lock'},
		'1', 10);
	ok(defined $held, "t2's worker waits for the lock in its flush");
	my $dropper = start_psql($node, $db, 'DROP DATABASE t2');
	my $killed = wait_until($node, $db, q{
		SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		 WHERE query = 'DROP DATABASE t2' AND backend_type = 'client backend'}, '1', 10);
	ok(defined $killed, 'the DROP DATABASE waiting for the worker is terminated');
	my ($dok, $dout, $derr) = finish_psql($dropper);
	like($derr, qr/terminating connection/, '... and its backend is gone (FATAL)');
	finish_psql($locker);
	finish_psql($flusher);
	ok(defined wait_for_worker($node, 't2', 15), '... and t2 has a worker again');
	($ok, $out) = timed($node, 't2', 'SELECT apikeys.flush_usage()', 40);
	is($out, 't', '... that flushes');
	exact('t2', { $k2 => [ 3, 0 ] }, "t2: the 3 calls are counted once");
}
check_no_crash($node, $sec, 'no crash around failed DROP DATABASE');

# ---------------------------------------------------------------------------
# 3. ALLOW_CONNECTIONS false keeps the counts
# ---------------------------------------------------------------------------
$node->stop;
$node = fresh_node('reliability_3');
$sec = -s $node->logfile;
sql($node, $db, 'CREATE DATABASE t3');
create_extension($node, 't3');
ok(defined wait_for_worker($node, 't3', 10), 't3 has its worker');
my ($k3, $key3) = create_key($node, 't3', 'cleo', 't3 key');
($ok, $out) = timed($node, 't3', "SELECT string_agg(DISTINCT (v).code, ',') FROM (SELECT apikeys.apikey_validate('$key3') v FROM generate_series(1, 7)) s", 20);
is($out, 'valid', 't3: 7 calls');
sql($node, $db, 'ALTER DATABASE t3 ALLOW_CONNECTIONS false');
# the launcher looks at pg_database every 5 s: give it two looks
sleep 11;
my @t3w = worker_pids($node, 't3');
is(scalar @t3w, 1, 't3 keeps its worker while it accepts no connections');
sql($node, $db, 'ALTER DATABASE t3 ALLOW_CONNECTIONS true');
($ok, $out) = timed($node, 't3', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', 'flush_usage() in t3');
exact('t3', { $k3 => [ 7, 0 ] }, 'the 7 calls made before ALLOW_CONNECTIONS false are counted');
check_no_crash($node, $sec, 'no crash around ALLOW_CONNECTIONS false');

# ---------------------------------------------------------------------------
# 4. A restarted launcher adopts the workers
# 5. pg_cancel_backend of a worker does not kill it
# ---------------------------------------------------------------------------
$node->stop;
$node = fresh_node('reliability_4');
$sec = -s $node->logfile;
for my $d ('t2', 't3')
{
	sql($node, $db, "CREATE DATABASE $d");
	create_extension($node, $d);
	wait_for_worker($node, $d, 10);
}
my %before = map { $_ => join(',', worker_pids($node, $_)) } ('postgres', 't2', 't3');
ok((!grep { $_ eq '' } values %before), 'postgres, t2 and t3 each have a worker');
# DEBUG1 makes the postmaster log each background worker it registers
$node->append_conf('postgresql.conf', 'log_min_messages = debug1');
$node->reload;
my $launcher = sql($node, $db,
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'apikeys launcher'");
sql($node, $db, "SELECT pg_terminate_backend($launcher)");
my $back = wait_until($node, $db,
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys launcher' AND pid <> $launcher",
	'1', 15);
ok(defined $back, 'a terminated launcher comes back');
my $off = -s $node->logfile;
sleep 6;
my $log = slurp_file($node->logfile, $off);
# (it may look once at a database it knows nothing of, such as template1)
my $starts = () = $log =~ /registering background worker "apikeys worker for database (?:postgres|t2|t3)"/g;
is($starts, 0, 'the new launcher starts no worker for postgres, t2, t3 in 6 s: it adopted them');
my %after = map { $_ => join(',', worker_pids($node, $_)) } ('postgres', 't2', 't3');
is_deeply(\%after, \%before, '... which are the same processes');

my $victim = $after{t3};
sql($node, $db, "SELECT pg_cancel_backend($victim)");
sleep 2;
is(join(',', worker_pids($node, 't3')), $victim, 'pg_cancel_backend leaves the worker of t3 running');
my ($k3b, $key3b) = create_key($node, 't3', 'cleo', 't3 key b');
($ok, $out) = timed($node, 't3', "SELECT string_agg(DISTINCT (v).code, ',') FROM (SELECT apikeys.apikey_validate('$key3b') v FROM generate_series(1, 2)) s", 20);
is($out, 'valid', 't3: 2 calls');
($ok, $out) = timed($node, 't3', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', '... and it still flushes');
$node->adjust_conf('postgresql.conf', 'log_min_messages', 'warning');
$node->reload;
check_no_crash($node, $sec, 'no crash around launcher restart and cancel');

# ---------------------------------------------------------------------------
# 6. A key created and validated in an open transaction, while the table fills
# ---------------------------------------------------------------------------
$node->stop;
$node = fresh_node('reliability_6');
$sec = -s $node->logfile;
my $fill = bulk($db, 'fill6', 'bob', 250);
sql($node, $db, 'CREATE TABLE public.pending (id text)');
my $open = start_psql($node, $db, q{
	CREATE TEMP TABLE k AS SELECT * FROM apikeys.apikey_create(owner => 'eve', name => 'in flight');
	INSERT INTO public.pending SELECT id FROM k;
	SELECT count(*) FROM (SELECT apikeys.apikey_validate(k.key) v FROM k, generate_series(1, 5)) s WHERE (v).valid;
	SELECT pg_sleep(6);});
usleep(500_000);
($ok, $out, $took) = timed($node, $db,
	'SELECT count(*) FROM public.fill6, apikeys.apikey_validate(key) v WHERE v.valid', 30);
is($out, '250', sprintf('250 other keys validated while it is open (%.2fs)', $took));
my ($ok6, $out6, $err6) = finish_psql($open);
like($out6, qr/^5$/m, 'the open transaction validated its key 5 times, then committed') or diag($err6);
flush_usage($node, $db);
my $pending = sql($node, $db, 'SELECT id FROM public.pending');
is(sql($node, $db, "SELECT coalesce(sum(calls), 0) FROM apikeys.usage WHERE key_id = '$pending'"),
	'5', 'its 5 calls are counted once it commits');

# ... and the counts of a key whose creating transaction rolls back go away
# without holding room: the table keeps working
sql($node, $db, q{
	BEGIN;
	SELECT count(*) FROM apikeys.apikey_create(owner => 'eve', name => 'rolled back') k,
	       generate_series(1, 3), apikeys.apikey_validate(k.key);
	ROLLBACK;});
($ok, $out, $took) = timed($node, $db,
	'SELECT count(*) FROM public.fill6, apikeys.apikey_validate(key) v WHERE v.valid', 30);
is($out, '250', sprintf('after a rolled-back key, 250 keys validate (%.2fs)', $took));
flush_usage($node, $db);
is(sql($node, $db, q{SELECT count(*) FROM apikeys.usage u WHERE NOT EXISTS
	(SELECT FROM apikeys.keys k WHERE k.id = u.key_id)}), '0', 'no usage row without a key');
check_no_crash($node, $sec, 'no crash around keys of open transactions');

# ---------------------------------------------------------------------------
# 7a. DROP EXTENSION while the worker is down
# ---------------------------------------------------------------------------
$node->stop;
$node = fresh_node('reliability_7');
$sec = -s $node->logfile;
bulk($db, 'fill7', 'bob', 50);
sql($node, $db, 'CREATE DATABASE t7');
create_extension($node, 't7');
my $w7 = wait_for_worker($node, 't7', 10);
ok(defined $w7, 't7 has its worker');
bulk('t7', 'k7', 'dan', 100);
($ok, $out) = timed($node, 't7',
	'SELECT count(*) FROM public.k7, apikeys.apikey_validate(key) v WHERE v.valid', 20);
is($out, '100', 't7: 100 distinct keys validated, not flushed: the table is full of them');
# the worker is restarted after a second: drop the extension before that
sql($node, 't7', "SELECT pg_terminate_backend($w7); DROP EXTENSION apikeys");
ok(defined wait_for_no_worker($node, "datname = 't7'", 10), 't7 has no worker after DROP EXTENSION');
sleep 2;
($ok, $out, $took) = timed($node, $db,
	'SELECT count(*) FROM public.fill7, apikeys.apikey_validate(key) v WHERE v.valid', 20);
ok($ok && $out eq '50',
	sprintf('validations elsewhere do not wait on the counts of a dropped extension (%.2fs)', $took))
  or diag("got: $out");
check_no_crash($node, $sec, 'no crash around DROP EXTENSION with the worker down');
$node->stop;

# ---------------------------------------------------------------------------
# 7b. synchronous_commit = off: a confirmed flush survives an immediate stop
# ---------------------------------------------------------------------------
my $async = new_node('reliability_async',
	"apikeys.flush_interval = '1h'",
	'synchronous_commit = off',
	"wal_writer_delay = '10s'",
	'wal_writer_flush_after = 0');
create_extension($async, $db);
ok(defined wait_for_worker($async, $db, 10), 'the async node has its worker');
my ($ka, $keya) = create_key($async, $db, 'fay', 'async');
my $lost = 0;
for my $round (1 .. 3)
{
	is(validate_n($async, $db, $keya, 4), 'valid', "round $round: 4 calls");
	flush_usage($async, $db);
	$async->stop('immediate');
	$async->start;
	my $n = sql($async, $db, "SELECT coalesce(sum(calls), 0) FROM apikeys.usage WHERE key_id = '$ka'");
	is($n, 4 * $round, "round $round: the flushed calls survive an immediate stop ($n)");
}
$async->stop;
done_testing();
