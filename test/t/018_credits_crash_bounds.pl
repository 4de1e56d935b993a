# 018_credits_crash_bounds.pl -- the credits bugs found while writing
# 015_credits.pl, each checked where it failed (issue 13):
#   P3  apikey_credit_usage() failed on every call (operator precedence);
#   P1  a prefetched lease was added on top of the free part, so a SIGKILL
#       could cost 1.5 x apikeys.credit_lease (now topped up to the lease);
#   P2  pg_ctl -m immediate saved shared memory like a clean shutdown, which
#       gave back a charge whose transaction had written its commit record
#       (now the dump is written only after a clean shutdown).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $lease = 10;
my $db = 'postgres';
my $node = new_node('probe',
	"apikeys.credit_lease = $lease",
	"apikeys.flush_interval = '1h'",
	'wal_level = replica', 'max_wal_senders = 2');
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'worker');

sub balance
{
	my ($owner) = @_;
	return sql($node, $db,
		"SELECT COALESCE(apikeys.apikey_credits('$owner')->>'email_credit', 'none')");
}
sub charge
{
	my ($key, $cost) = @_;
	$cost //= 1;
	return sql($node, $db, qq{
		SELECT (c).code || ' ' || (c).remaining
		  FROM (SELECT apikeys.apikey_charge('$key', 'email_credit', $cost) AS c) s});
}
sub pool_row
{
	my ($owner) = @_;
	return sql($node, $db, qq{
		SELECT available::numeric(18,1) || ' ' || leased::numeric(18,1) FROM apikeys.credit_pools
		 WHERE owner = '$owner' AND credit = 'email_credit' AND key_id IS NULL});
}

# --- P3: apikey_credit_usage fails on every call
sql($node, $db, "SELECT apikeys.apikey_credit_add('u', 'email_credit', 10)");
my ($ku_id, $ku_key) = create_key($node, $db, 'u', 'u');
is(charge($ku_key), 'valid 9.0', 'charge');
flush_usage($node, $db);
my ($ret, $out, $err) = $node->psql($db, "SELECT count(*) FROM apikeys.apikey_credit_usage('u')");
is($ret, 0, 'P3: apikey_credit_usage(owner) runs') or diag($err);

# --- P1: prefetch makes the unspent lease exceed credit_lease; a SIGKILL loses it
sql($node, $db, "SELECT apikeys.apikey_credit_add('pf', 'email_credit', 1000)");
my ($kp_id, $kp_key) = create_key($node, $db, 'pf', 'pf');
is(join(',', map { charge($kp_key) } 1 .. 6), join(',', map { "valid $_.0" } reverse 994 .. 999), '6 charges');
sql($node, $db, "SELECT apikeys.apikey_credit_add('other', 'email_credit', 5)");
my ($ko_id, $ko_key) = create_key($node, $db, 'other', 'other');
is(charge($ko_key), 'valid 4.0', 'a charge of another owner (its first lease wakes the worker)');
my $t = wait_until($node, $db, "SELECT leased FROM apikeys.credit_pools WHERE owner = 'pf' AND key_id IS NULL", '20.0000', 5);
note('row: ' . pool_row('pf') . ' (prefetch lease ' . (defined $t ? "after ${t}s" : 'not seen') . ')');
my $before = balance('pf');
my $victim = $node->background_psql($db);
my $pid = $victim->query_safe('SELECT pg_backend_pid()');
my $off = -s $node->logfile;
kill 'KILL', $pid;
eval { $victim->quit };
wait_for_log_within($node, qr/reinitializing/, $off, 30);
wait_until($node, $db, 'SELECT 1', '1', 30);
my $after = balance('pf');
note("P1: before $before after $after");
ok($before - $after <= $lease, "P1: a SIGKILL crash costs at most credit_lease ($lease): lost " . ($before - $after));
is(charge($kp_key), 'valid ' . sprintf('%.1f', $after - 1), 'P1: charges go on');
note('audit: ' . sql($node, $db, "SELECT string_agg(event || ' ' || detail::text, '; ') FROM apikeys.audit WHERE owner = 'pf' AND event = 'credits_written_off'"));

# --- P2: a committed charge given back by an immediate stop (dump at immediate shutdown)
sql($node, $db, "SELECT apikeys.apikey_credit_add('sr', 'email_credit', 1000)");
my ($ks_id, $ks_key) = create_key($node, $db, 'sr', 'sr');
is(charge($ks_key), 'valid 999.0', 'a first charge (lease in place)');
sql($node, $db, 'CREATE TABLE public.paid (n int)');
sql($node, $db, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'; SELECT pg_reload_conf()");
usleep(300_000);
my $h = start_psql($node, $db, qq{
	SELECT count(*) FROM (SELECT apikeys.apikey_charge('$ks_key', 'email_credit', 5) AS c) s WHERE (c).valid;
	INSERT INTO public.paid VALUES (5);});
ok(defined wait_until($node, $db,
	"SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'", '1', 10),
	'P2: the charging transaction has written its commit record and waits for a (missing) synchronous standby');
$before = balance('sr');
note("P2: balance before the immediate stop: $before; row " . pool_row('sr'));
sql($node, $db, 'ALTER SYSTEM RESET synchronous_standby_names');
$node->stop('immediate');
finish_psql($h);
$node->start;
is(sql($node, $db, 'SELECT sum(n) FROM public.paid'), '5', 'P2: the transaction committed (its row is there)');
$after = balance('sr');
note("P2: balance after: $after; row " . pool_row('sr'));
ok($after <= 994, "P2: the committed charge of 5 is not given back: balance $after <= 994");
note('audit: ' . sql($node, $db, "SELECT string_agg(event || ' ' || detail::text, '; ') FROM apikeys.audit WHERE owner = 'sr' AND event = 'credits_written_off'"));

$node->stop;
done_testing();
