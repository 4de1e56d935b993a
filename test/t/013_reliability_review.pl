# 013_reliability_review.pl -- the outages an outside review found in the
# first fix of issue 10, each as it was reproduced on a running server:
#
#   1. an open transaction that created and validated keys filled the
#      counter table, and validations in every database waited for it
#   2. an unsettled flush mark survived an immediate stop, its transaction
#      id was given to a new transaction after recovery, and the next flush
#      took the mark for committed: counts lost
#   3. an idle worker absorbed no ProcSignalBarrier, so every DROP DATABASE
#      waited up to apikeys.expiry_interval
#   4. CREATE EXTENSION committed with COMMIT PREPARED got no worker
#   5. DROP EXTENSION committed with COMMIT PREPARED, its worker killed
#      meanwhile: the counts of the dropped table held the table forever
#   6. a fast shutdown never finished while a worker waited for a lock
#   7. a worker paused by database DDL left its counts in the table, and
#      other databases waited for the length of the DDL
#   8. counts of a prepared transaction's own keys were lost by a restart
#
# Every statement that could hang has a statement_timeout.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $db = 'postgres';
my $node = new_node('review',
	'apikeys.max_tracked_keys = 100',
	"apikeys.flush_interval = '1h'",
	'max_prepared_transactions = 10',
	'max_worker_processes = 24');
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'postgres has its worker');

# keys(DB, TABLE, N) -- N keys in public.TABLE(n, id, key)
sub keys_in
{
	my ($d, $table, $n) = @_;
	sql($node, $d, qq{
		CREATE TABLE public.$table AS
		SELECT g AS n, k.id, k.key FROM generate_series(1, $n) g,
		       LATERAL apikeys.apikey_create(owner => 'rev', name => 'k' || g) k});
}

# validate_all(DB, TABLE, SECONDS, [WHERE]) -- validates every key once
sub validate_all
{
	my ($d, $table, $seconds, $where) = @_;
	$where //= 'true';
	return timed($node, $d, "SELECT count(*) FROM (SELECT (apikeys.apikey_validate(key)).valid v
	                     FROM public.$table WHERE $where) s WHERE v", $seconds);
}

sub calls_of
{
	my ($d, $table) = @_;
	return sql($node, $d, "SELECT coalesce(sum(u.calls), 0) FROM apikeys.usage u
	                        JOIN public.$table t ON t.id = u.key_id");
}

keys_in($db, 'other', 20);
for my $d ('a', 'b')
{
	sql($node, $db, "CREATE DATABASE $d");
	create_extension($node, $d);
	ok(defined wait_for_worker($node, $d, 10), "$d has its worker");
}

# ---------------------------------------------------------------------------
# 1. An open transaction's own keys hold no room
# ---------------------------------------------------------------------------
my $open = start_psql($node, 'a', q{
	CREATE TABLE public.own AS
	SELECT g AS n, k.id, k.key FROM generate_series(1, 100) g,
	       LATERAL apikeys.apikey_create(owner => 'rev', name => 'own' || g) k;
	SELECT count(*) FROM (SELECT (apikeys.apikey_validate(key)).valid v FROM public.own) s WHERE v;
	SELECT pg_sleep(8);});
usleep(1_500_000);
my ($ok, $out, $took) = validate_all($db, 'other', 15);
ok($ok && $out eq '20' && $took < 3,
	sprintf('20 keys validate in postgres while a transaction in a holds 100 counts of its own keys (%.2fs)', $took))
  or diag($out);
my ($ok1, $out1, $err1) = finish_psql($open);
like($out1, qr/^100$/m, 'that transaction validated its 100 keys, then committed') or diag($err1);
($ok, $out) = timed($node, 'a', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', 'flush_usage() in a');
is(calls_of('a', 'own'), '100', 'its 100 calls are counted once it commits');

# ---------------------------------------------------------------------------
# 8. A prepared transaction's own keys: counted after a restart too
# ---------------------------------------------------------------------------
sql($node, 'b', q{
	BEGIN;
	CREATE TABLE public.prep AS
	SELECT k.id, k.key FROM apikeys.apikey_create(owner => 'rev', name => 'prepared') k;
	SELECT count(*) FROM (SELECT apikeys.apikey_validate(key) FROM public.prep, generate_series(1, 3)) s;
	PREPARE TRANSACTION 'own_keys';});
$node->restart;
sql($node, 'b', "COMMIT PREPARED 'own_keys'");
($ok, $out) = timed($node, 'b', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', 'flush_usage() in b after the restart');
is(calls_of('b', 'prep'), '3', "a prepared transaction's 3 calls of its own key survive a restart");

# ---------------------------------------------------------------------------
# 2. An unsettled flush mark across an immediate stop
# ---------------------------------------------------------------------------
keys_in('b', 'xid', 10);
($ok, $out) = timed($node, 'b', 'SELECT apikeys.flush_usage()', 40);
# a prepared transaction holds the flush: the counters are marked, nothing written
sql($node, 'b', q{BEGIN; LOCK TABLE apikeys.usage IN ACCESS EXCLUSIVE MODE; PREPARE TRANSACTION 'lk';});
($ok, $out) = timed($node, 'b', q{SELECT count(*) FROM (SELECT (apikeys.apikey_validate(key)).valid v
                             FROM public.xid, generate_series(1, 3)) s WHERE v}, 20);
is($out, '30', 'b: 30 calls, then a flush that waits for the lock');
my $flusher = start_psql($node, 'b', "SET statement_timeout = '3s'; SELECT apikeys.flush_usage()");
ok(defined wait_until($node, $db, q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'apikeys worker' AND datname = 'b' AND wait_event_type = 'Lock'}, '1', 10),
	"b's worker waits in its flush, its counters marked");
finish_psql($flusher);
$node->stop('immediate');
# Start with no room for workers (the launcher and the logical replication
# launcher take both slots), so that transactions take the ids after
# recovery before any flush looks at the mark; then a clean restart.
$node->adjust_conf('postgresql.conf', 'max_worker_processes', '2');
$node->start;
my $xids = sql($node, 'b', q{SELECT string_agg(x::text, ',') FROM (
	SELECT txid_current() AS x) s});
for (1 .. 20)
{
	sql($node, 'b', 'CREATE TEMP TABLE t AS SELECT txid_current() AS x');
}
note("after recovery, transactions took txids from $xids on");
$node->stop('fast');
$node->adjust_conf('postgresql.conf', 'max_worker_processes', '24');
$node->start;
sql($node, 'b', "ROLLBACK PREPARED 'lk'");
($ok, $out) = timed($node, 'b', 'SELECT apikeys.flush_usage()', 40);
($ok, $out) = timed($node, 'b', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', 'flush_usage() in b after the immediate stop');
is(calls_of('b', 'xid'), '30', 'the 30 calls marked by the interrupted flush are counted once');

# ---------------------------------------------------------------------------
# 3. DROP DATABASE does not wait for idle workers
# ---------------------------------------------------------------------------
sql($node, $db, 'CREATE DATABASE plain');
my $t0 = time;
($ok, $out, $took) = timed($node, $db, 'DROP DATABASE plain', 30);
ok($ok && $took < 5, sprintf('DROP DATABASE of a database without the extension takes %.2fs', $took))
  or diag($out);

# ---------------------------------------------------------------------------
# 4. CREATE EXTENSION by COMMIT PREPARED gets a worker
# ---------------------------------------------------------------------------
sql($node, $db, 'CREATE DATABASE c');
sleep 6;    # the launcher has looked at c and found no extension
sql($node, 'c', q{BEGIN; CREATE EXTENSION apikeys CASCADE; PREPARE TRANSACTION 'cx';});
sql($node, 'c', "COMMIT PREPARED 'cx'");
keys_in('c', 'ck', 5);
($ok, $out) = validate_all('c', 'ck', 20);
is($out, '5', 'c: 5 calls');
($ok, $out) = timed($node, 'c', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', 'flush_usage() in c: c got a worker');
is(calls_of('c', 'ck'), '5', 'c: the 5 calls are counted');

# ---------------------------------------------------------------------------
# 5. DROP EXTENSION by COMMIT PREPARED, the worker killed meanwhile
# ---------------------------------------------------------------------------
sql($node, $db, 'CREATE DATABASE d2');
create_extension($node, 'd2');
my $w = wait_for_worker($node, 'd2', 10);
keys_in('d2', 'dk', 100);
($ok, $out) = validate_all('d2', 'dk', 20);
is($out, '100', 'd2: 100 distinct keys validated: the table is full of them');
sql($node, 'd2', q{BEGIN; DROP EXTENSION apikeys CASCADE; PREPARE TRANSACTION 'dx';});
sql($node, $db, "SELECT pg_terminate_backend($w)");
sql($node, 'd2', "COMMIT PREPARED 'dx'");
ok(defined wait_for_no_worker($node, "datname = 'd2'", 15), 'd2 ends up without a worker');
($ok, $out, $took) = validate_all($db, 'other', 20);
ok($ok && $out eq '20',
	sprintf("validations in postgres do not wait on d2's dropped counts (%.2fs)", $took))
  or diag($out);

# ---------------------------------------------------------------------------
# 7. A worker paused by DDL flushes first
# ---------------------------------------------------------------------------
sql($node, $db, 'CREATE DATABASE tpl');
create_extension($node, 'tpl');
ok(defined wait_for_worker($node, 'tpl', 10), 'tpl has its worker');
keys_in('tpl', 'tk', 100);
keys_in($db, 'fresh', 10);
($ok, $out) = validate_all('tpl', 'tk', 20);
is($out, '100', 'tpl: 100 distinct keys validated, not flushed');
my $holder = start_psql($node, 'tpl', 'SELECT pg_sleep(7)');
usleep(300_000);
my $ddl = start_psql($node, $db, 'CREATE DATABASE z TEMPLATE tpl');
usleep(1_500_000);
($ok, $out, $took) = validate_all($db, 'fresh', 20);
ok($ok && $out eq '10' && $took < 3,
	sprintf('new keys validate in postgres during a CREATE DATABASE ... TEMPLATE tpl (%.2fs)', $took))
  or diag($out);
my ($dok, $dout, $derr) = finish_psql($ddl);
like($derr, qr/being accessed by other users/, '... which fails: tpl is in use');
finish_psql($holder);
($ok, $out) = timed($node, 'tpl', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', 'tpl has a worker again');
is(calls_of('tpl', 'tk'), '100', "tpl's 100 calls are counted once");

# ---------------------------------------------------------------------------
# 6. A fast shutdown while a worker waits for a lock
# ---------------------------------------------------------------------------
sql($node, 'a', q{BEGIN; LOCK TABLE apikeys.usage IN SHARE MODE; PREPARE TRANSACTION 'stuck';});
($ok, $out) = validate_all('a', 'own', 20, 'n <= 5');
is($out, '5', 'a: 5 calls');
$flusher = start_psql($node, 'a', "SET statement_timeout = '3s'; SELECT apikeys.flush_usage()");
ok(defined wait_until($node, $db, q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'apikeys worker' AND datname = 'a' AND wait_event_type = 'Lock'}, '1', 10),
	"a's worker waits for the lock in its flush");
finish_psql($flusher);
$t0 = time;
my $stopped;
{
	local $ENV{PGCTLTIMEOUT} = 20;
	$stopped = $node->stop('fast', fail_ok => 1);
}
ok($stopped && time - $t0 < 20, sprintf('a fast shutdown finishes (%.2fs)', time - $t0));
$node->stop('immediate') unless $stopped;
$node->start;
sql($node, 'a', "ROLLBACK PREPARED 'stuck'");
($ok, $out) = timed($node, 'a', 'SELECT apikeys.flush_usage()', 40);
is($out, 't', 'flush_usage() in a after the restart');
is(calls_of('a', 'own'), '105', "a: the 5 calls made before the shutdown are counted");

check_no_crash($node);
$node->stop;
done_testing();
