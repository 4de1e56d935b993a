# 004_worker_lifecycle.pl -- one worker per database that has the
# extension, started and ended with it, and robust to errors, database DDL,
# reloads and a terminated launcher.
#
#   - CREATE EXTENSION in a second database gets it a worker within seconds;
#     counts are keyed by database (even for the same key id in both)
#   - an ERROR in a flush is logged, the worker stays, the next pass runs,
#     and nothing is lost
#   - DROP EXTENSION ends the worker; CREATE EXTENSION brings it back, and
#     counts from before the drop never reach the new tables
#   - CREATE DATABASE ... TEMPLATE, ALTER DATABASE ... RENAME and DROP
#     DATABASE work while the database has a worker; workers come back (or
#     go away) afterwards
#   - databases without the extension keep no worker
#   - a configuration reload does not crash anything
#   - a terminated launcher comes back, and so do its workers
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = new_node('worker_lifecycle', "apikeys.flush_interval = '1s'");

sql($node, 'postgres', 'CREATE DATABASE db1');
sql($node, 'postgres', 'CREATE DATABASE db2');

sub all_workers
{
	return sql($node, 'postgres',
		q{SELECT coalesce(string_agg(datname, ',' ORDER BY datname), '') FROM pg_stat_activity
		   WHERE backend_type = 'apikeys worker'});
}

# expected usage per database: db => { key id => [calls, rejected] }
my %expect;
sub check_usage
{
	my ($db, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	is_deeply(usage_of($node, $db), $expect{$db} // {}, "$db: $label");
}

# ---------------------------------------------------------------------------
# 1. A worker per database with the extension
# ---------------------------------------------------------------------------
my $sec1 = -s $node->logfile;
create_extension($node, 'db1');
my $t0 = time;
my $w1 = wait_for_worker($node, 'db1', 10);
ok(defined $w1, sprintf('db1 gets a worker after CREATE EXTENSION (%.2fs)', time - $t0));

create_extension($node, 'db2');
$t0 = time;
my $w2 = wait_for_worker($node, 'db2', 10);
ok(defined $w2, sprintf('db2 gets its own worker after CREATE EXTENSION (%.2fs)', time - $t0));
is(all_workers(), 'db1,db2', 'one worker each for db1 and db2, none elsewhere');

my ($k1_id, $k1_key) = create_key($node, 'db1', 'olga', 'db1 key');
my ($k2_id, $k2_key) = create_key($node, 'db2', 'olga', 'db2 key', "scope => 'verify'");
# the same key (id and digest) in db2 as well: only the database tells
# their counts apart
my $copy_cols = 'id, owner, name, prefix, last4, digest, scope, created_at';
my $k1_row = sql($node, 'db1',
	"SELECT format('(%L, %L, %L, %L, %L, %L, %L, %L)', $copy_cols) FROM apikeys.keys WHERE id = '$k1_id'");
my $k2_row = sql($node, 'db2',
	"SELECT format('(%L, %L, %L, %L, %L, %L, %L, %L)', $copy_cols) FROM apikeys.keys WHERE id = '$k2_id'");
sql($node, 'db2', "INSERT INTO apikeys.keys ($copy_cols) VALUES $k1_row");

is(validate_n($node, 'db1', $k1_key, 5), 'valid', 'db1: 5 calls of k1');
is(validate_n($node, 'db2', $k1_key, 9), 'valid', 'db2: 9 calls of the same k1');
is(validate_n($node, 'db2', $k2_key, 4, 'lists:read'), 'insufficient_scope', 'db2: 4 rejected calls of k2');
flush_usage($node, 'db1');
flush_usage($node, 'db2');
$expect{db1} = { $k1_id => [ 5, 0 ] };
$expect{db2} = { $k1_id => [ 9, 0 ], $k2_id => [ 0, 4 ] };
check_usage('db1', "only db1's calls");
check_usage('db2', "only db2's calls");

check_no_crash($node, $sec1, 'no process crashed during new workers');

# ---------------------------------------------------------------------------
# 2. An ERROR in a pass is logged and the next pass runs
# ---------------------------------------------------------------------------
my $sec2 = -s $node->logfile;
sql($node, 'db1',
	'ALTER TABLE apikeys.usage ADD CONSTRAINT tmp_block CHECK (calls < 0) NOT VALID');
my $offset = -s $node->logfile;
is(validate_n($node, 'db1', $k1_key, 6), 'valid', 'db1: 6 calls while flushes fail');
my $err_re = qr/ERROR:\s+new row for relation "usage" violates check constraint "tmp_block"/;
my $off1 = wait_for_log_within($node, $err_re, $offset, 10);
ok(defined $off1, 'the failing flush is logged as an ERROR');
my $off2 = defined $off1 ? wait_for_log_within($node, $err_re, $off1, 10) : undef;
ok(defined $off2, '... and the next pass runs (and fails again)');
is(join(',', worker_pids($node, 'db1')), $w1, 'the same worker is still running');
check_usage('db1', 'nothing written while the flush fails');
sql($node, 'db1', 'ALTER TABLE apikeys.usage DROP CONSTRAINT tmp_block');
$expect{db1}{$k1_id}[0] += 6;
my $took = wait_until($node, 'db1',
	"SELECT sum(calls) FROM apikeys.usage WHERE key_id = '$k1_id'", $expect{db1}{$k1_id}[0], 10);
ok(defined $took, sprintf('once the constraint is gone, the next pass flushes by itself (%.2fs)', $took // -1));
flush_usage($node, 'db1');
check_usage('db1', 'the 6 calls made while flushes failed are there, once');

check_no_crash($node, $sec2, 'no process crashed during the failing flush');

# ---------------------------------------------------------------------------
# 3. DROP EXTENSION ends the worker; counts from before never come back
# ---------------------------------------------------------------------------
my $sec3 = -s $node->logfile;
# The tables are locked for the whole transaction, so the worker cannot
# flush these calls before the extension is gone.
is(sql($node, 'db2', qq{
	BEGIN;
	LOCK TABLE apikeys.keys, apikeys.usage IN ACCESS EXCLUSIVE MODE;
	SELECT count(*) FROM (SELECT apikeys.apikey_validate('$k1_key') FROM generate_series(1, 7)) s;
	SELECT count(*) FROM (SELECT apikeys.apikey_validate('$k2_key') FROM generate_series(1, 8)) s;
	DROP EXTENSION apikeys;
	COMMIT;}), "7\n8", 'db2: 15 calls, then DROP EXTENSION, in one transaction');
$t0 = time;
$took = wait_for_no_worker($node, "datname = 'db2'", 10);
ok(defined $took, sprintf('DROP EXTENSION ends the worker of db2 (%.2fs)', $took // -1));
is(all_workers(), 'db1', 'only db1 has a worker');

create_extension($node, 'db2');
$t0 = time;
$w2 = wait_for_worker($node, 'db2', 10);
ok(defined $w2, sprintf('CREATE EXTENSION again brings the worker of db2 back (%.2fs)', time - $t0));
# the same keys again, so that stale counters would have somewhere to go
sql($node, 'db2', "INSERT INTO apikeys.keys ($copy_cols) VALUES $k1_row, $k2_row");
flush_usage($node, 'db2');
$expect{db2} = {};
check_usage('db2', 'the counts from before DROP EXTENSION are not in the new tables');
is(validate_n($node, 'db2', $k2_key, 3), 'valid', 'db2: 3 calls of k2 in the new tables');
flush_usage($node, 'db2');
$expect{db2} = { $k2_id => [ 3, 0 ] };
check_usage('db2', 'exactly the 3 new calls');
check_usage('db1', 'db1 is unaffected');

check_no_crash($node, $sec3, 'no process crashed during DROP/CREATE EXTENSION');

# ---------------------------------------------------------------------------
# 4. Database DDL while workers run
# ---------------------------------------------------------------------------
my $sec4 = -s $node->logfile;
is(join(',', worker_pids($node, 'db1')), $w1, 'db1 has its worker');
$t0 = time;
my ($ret, $out, $err) = $node->psql('postgres', 'CREATE DATABASE db3 TEMPLATE db1',
	timeout => 60);
is($ret, 0, sprintf('CREATE DATABASE db3 TEMPLATE db1 works while db1 has a worker (%.2fs)', time - $t0))
  or diag($err);
my $w1_new = wait_for_worker($node, 'db1', 10, $w1);
ok(defined $w1_new, "db1's worker comes back afterwards");
$w1 = $w1_new // $w1;
$t0 = time;
my $w3 = wait_for_worker($node, 'db3', 15);
ok(defined $w3, sprintf('db3, which has the extension from its template, gets a worker (%.2fs)', time - $t0));

# db3 holds copies of db1's keys (same ids): counts stay per database
$expect{db3} = { map { $_ => [ @{ $expect{db1}{$_} } ] } keys %{ $expect{db1} } };
check_usage('db3', "db3 starts with the copy of db1's usage");
is(validate_n($node, 'db3', $k1_key, 2), 'valid', 'db3: 2 calls of k1');
is(validate_n($node, 'db1', $k1_key, 3), 'valid', 'db1: 3 calls of k1');
flush_usage($node, 'db3');
flush_usage($node, 'db1');
$expect{db3}{$k1_id}[0] += 2;
$expect{db1}{$k1_id}[0] += 3;
check_usage('db1', 'k1 gained exactly the 3 calls made in db1');
check_usage('db3', 'k1 gained exactly the 2 calls made in db3');

($ret, $out, $err) = $node->psql('postgres', 'ALTER DATABASE db3 RENAME TO db3r', timeout => 60);
is($ret, 0, 'ALTER DATABASE db3 RENAME works while db3 has a worker') or diag($err);
ok(defined wait_for_worker($node, 'db3r', 10), 'the renamed database has its worker back');

is(join(',', worker_pids($node, 'db2')), $w2, 'db2 has its worker');
my $db2_oid = sql($node, 'postgres', "SELECT oid FROM pg_database WHERE datname = 'db2'");
$t0 = time;
($ret, $out, $err) = $node->psql('postgres', 'DROP DATABASE db2', timeout => 60);
is($ret, 0, sprintf('DROP DATABASE db2 succeeds while its worker runs (%.2fs)', time - $t0))
  or diag($err);
unlike($err, qr/being accessed by other users/, '... without "being accessed by other users"');
is(sql($node, 'postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $w2"), '0',
	'the worker of db2 is gone');
usleep(1_500_000);    # past RESTART_DELAY: nothing may start for db2 again
is(sql($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND (datid = $db2_oid OR datname = 'db2')"),
	'0', 'no worker for the dropped database');

check_no_crash($node, $sec4, 'no process crashed during database DDL');

# ---------------------------------------------------------------------------
# 5. No lingering workers where there is no extension
# ---------------------------------------------------------------------------
my $sec5 = -s $node->logfile;
ok(defined wait_for_no_worker($node, "datname IN ('postgres', 'template1')", 10),
	'postgres and template1 (no extension) have no worker');
is(all_workers(), 'db1,db3r', 'exactly one worker per database with the extension');

check_no_crash($node, $sec5, 'no process crashed during idle databases');

# ---------------------------------------------------------------------------
# 6. A configuration reload
# ---------------------------------------------------------------------------
my $sec6 = -s $node->logfile;
my $launcher = sql($node, 'postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'apikeys launcher'");
ok($launcher, "the launcher is running (pid $launcher)");
sql($node, 'postgres', "ALTER SYSTEM SET apikeys.expiry_interval = 30");
is(sql($node, 'postgres', 'SELECT pg_reload_conf()'), 't', 'pg_reload_conf()');
usleep(1_000_000);
sql($node, 'postgres', 'ALTER SYSTEM RESET apikeys.expiry_interval');
sql($node, 'postgres', 'SELECT pg_reload_conf()');
usleep(1_000_000);
wait_until($node, 'postgres', 'SELECT 1', '1', 30);
is(sql($node, 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'apikeys launcher'"),
	$launcher, '... the launcher is the same process after the reloads');

# after a crash the workers come back; make sure of that before going on
ok(defined wait_for_worker($node, 'db1', 20), 'db1 has a worker after the reloads');

check_no_crash($node, $sec6, 'a reload crashes no process');

# ---------------------------------------------------------------------------
# 7. A terminated launcher comes back, and so does a terminated worker
# ---------------------------------------------------------------------------
my $sec7 = -s $node->logfile;
$launcher = sql($node, 'postgres',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'apikeys launcher'");
is(sql($node, 'postgres', "SELECT pg_terminate_backend($launcher)"), 't', 'terminate the launcher');
# (bgw_restart_time of the launcher is 5 s)
$took = wait_until($node, 'postgres',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys launcher' AND pid <> $launcher",
	'1', 12);
ok(defined $took, sprintf('a new launcher starts (%.2fs)', $took // -1));
if (defined $took)
{
	$w1 = (worker_pids($node, 'db1'))[0] // 0;
	sql($node, 'postgres', "SELECT pg_terminate_backend($w1)");
	ok(defined wait_for_worker($node, 'db1', 10, $w1), 'then a terminated worker of db1 comes back');
	create_extension($node, 'postgres');
	ok(defined wait_for_worker($node, 'postgres', 10), 'and a new CREATE EXTENSION gets its worker');
}
else
{
	# without a launcher neither can happen: fail both at once
	fail('then a terminated worker of db1 comes back (no launcher)');
	fail('and a new CREATE EXTENSION gets its worker (no launcher)');
}
check_no_crash($node, $sec7, 'no process crashed during the terminated launcher');
check_no_crash($node, 0, 'no process crashed in the whole test');

$node->stop;
done_testing();
