# 002_usage_durability.pl -- counts survive a clean restart and a killed
# worker exactly; a crash loses at most the counts since the last flush.
#
# apikeys.flush_interval is 1 hour, so nothing is flushed by itself: every
# count below sits in shared memory until flush_usage() or a worker start.
#
#   - clean restart (fast): every unflushed count is there, exactly
#   - worker terminated (pg_terminate_backend): the launcher starts a new
#     one within seconds, and the counts held in shared memory are flushed
#     exactly (no loss, no double count)
#   - crash (immediate stop, then a backend killed with SIGKILL): committed
#     keys and revocations survive; counts flushed before survive; counts
#     since the last flush may be lost but never doubled; the workers come
#     back and counting goes on exactly
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

# (new_node sets restart_after_crash = on: the SIGKILL crash below
# reinitialises the server rather than shutting it down)
my $node = new_node('usage_durability', "apikeys.flush_interval = '1h'");
my $db = 'postgres';
create_extension($node, $db);
my $pid = wait_for_worker($node, $db, 10);
ok(defined $pid, 'the database gets its worker');

my %k;
($k{ka}{id}, $k{ka}{key}) = create_key($node, $db, 'alice', 'a');
($k{kb}{id}, $k{kb}{key}) = create_key($node, $db, 'alice', 'b');
($k{kr}{id}, $k{kr}{key}) = create_key($node, $db, 'alice', 'revoked');
sql($node, $db, "SELECT apikeys.apikey_revoke('$k{kr}{id}')");
my %vars = map { $_ => $k{$_}{key} } keys %k;
my $script = <<'EOS';
SELECT apikeys.apikey_validate(:ka);
SELECT apikeys.apikey_validate(:kb);
SELECT apikeys.apikey_validate(:kb);
SELECT apikeys.apikey_validate(:kr);
EOS

my %expect = map { $k{$_}{id} => [ 0, 0 ] } keys %k;
sub add_script_runs
{
	my ($n) = @_;
	$expect{ $k{ka}{id} }[0] += $n;
	$expect{ $k{kb}{id} }[0] += 2 * $n;
	$expect{ $k{kr}{id} }[1] += $n;
}
# usage_of, with zero rows for keys never flushed
sub usage_now
{
	my $u = usage_of($node, $db);
	$u->{$_} //= [ 0, 0 ] for keys %expect;
	return $u;
}

# ---------------------------------------------------------------------------
# 1. Clean restart
# ---------------------------------------------------------------------------
run_pgbench($node, $db, 8, 50, $script, \%vars);
add_script_runs(400);
usleep(500_000);
is(usage_rows($node, $db), 0,
	'with a 1 h flush interval nothing has been flushed yet');
$node->restart;    # fast mode: a clean shutdown
ok(!-e $node->data_dir . '/pg_stat/apikeys_usage.stat',
	'the counters saved at shutdown were read back and their file removed');
$pid = wait_for_worker($node, $db, 10);
ok(defined $pid, 'the worker is back after the restart');
flush_usage($node, $db);
is_deeply(usage_now(), \%expect, 'after a clean restart every count is there, exactly');

# ---------------------------------------------------------------------------
# 2. Worker terminated
# ---------------------------------------------------------------------------
run_pgbench($node, $db, 8, 50, $script, \%vars);
my %flushed = %{ usage_now() };
is_deeply(\%flushed, \%expect, 'the new counts are held in shared memory only');
add_script_runs(400);

is(sql($node, $db, "SELECT pg_terminate_backend($pid)"), 't', 'terminate the worker');
my $t0 = time;
my $new_pid = wait_for_worker($node, $db, 15, $pid);
ok(defined $new_pid, sprintf('the launcher starts a new worker (%.2fs)', time - $t0));
ok(defined $new_pid && time - $t0 <= 10, '... within 10 seconds');
flush_usage($node, $db);
is_deeply(usage_now(), \%expect,
	'the counts held while the worker was killed are flushed exactly once');

# once more, while validations are running
my $bench = start_psql($node, $db, qq{
	SELECT count(*) FROM (SELECT apikeys.apikey_validate('$k{ka}{key}')
	                        FROM generate_series(1, 20000)) s});
usleep(100_000);
sql($node, $db, "SELECT pg_terminate_backend($new_pid)");
my ($ok, $out, $err) = finish_psql($bench);
is($out, '20000', '20000 validations while the worker is terminated') or diag($err);
$expect{ $k{ka}{id} }[0] += 20000;
$pid = wait_for_worker($node, $db, 15, $new_pid);
ok(defined $pid, 'a new worker again');
flush_usage($node, $db);
is_deeply(usage_now(), \%expect, '... and the counts are exact');

# ---------------------------------------------------------------------------
# 3. Crash: immediate stop
# ---------------------------------------------------------------------------
# committed before the crash: a new key, a revocation, a flush
my ($kd_id, $kd_key) = create_key($node, $db, 'alice', 'made before the crash');
$k{kd} = { id => $kd_id, key => $kd_key };
$expect{$kd_id} = [ 0, 0 ];
is(sql($node, $db, "SELECT apikeys.apikey_revoke('$k{kb}{id}')"), 't', 'revoke key b');
flush_usage($node, $db, 'flush before the crash');
%flushed = %{ usage_now() };

# since the last flush: 30 + 20 (rejected) + 10
is(validate_n($node, $db, $k{ka}{key}, 30), 'valid', '30 calls of a after the flush');
is(validate_n($node, $db, $k{kb}{key}, 20), 'revoked', '20 calls of the revoked b');
is(validate_n($node, $db, $kd_key, 10), 'valid', '10 calls of the new key');
my %since = ($k{ka}{id} => [ 30, 0 ], $k{kb}{id} => [ 0, 20 ], $kd_id => [ 10, 0 ]);

$node->stop('immediate');
$node->start;

sub check_crash_bounds
{
	my ($label, $before, $sent) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $u = usage_now();
	my @bad;
	my ($t_after, $t_low, $t_high) = (0, 0, 0);
	for my $id (sort keys %expect)
	{
		for my $i (0, 1)
		{
			my $low = $before->{$id}[$i];
			my $high = $low + (($sent->{$id} // [ 0, 0 ])->[$i]);
			my $got = $u->{$id}[$i];
			push @bad, "$id\[$i]: $got not in [$low, $high]" if $got < $low || $got > $high;
			$t_after += $got;
			$t_low += $low;
			$t_high += $high;
		}
	}
	note("$label: total after $t_after, flushed before $t_low, sent $t_high");
	ok(!@bad, "$label: every key has at least what was flushed before and at most what was sent")
	  or diag(join("\n", @bad));
	ok($t_after >= $t_low && $t_after <= $t_high,
		"$label: total $t_after is between $t_low (flushed) and $t_high (sent)");
	return $u;
}

$pid = wait_for_worker($node, $db, 15);
ok(defined $pid, 'after an immediate stop and start the worker comes back');
flush_usage($node, $db, 'flush after the immediate stop');
my $after = check_crash_bounds('immediate stop', \%flushed, \%since);
is(validate_n($node, $db, $kd_key, 1), 'valid', 'the key committed before the crash validates');
is(validate_n($node, $db, $k{kb}{key}, 1), 'revoked',
	'the revocation committed before the crash holds');
%expect = map { $_ => [ @{ $after->{$_} } ] } keys %$after;
$expect{$kd_id}[0] += 1;
$expect{ $k{kb}{id} }[1] += 1;
flush_usage($node, $db);
is_deeply(usage_now(), \%expect, 'counting after the crash is exact');

# ---------------------------------------------------------------------------
# 4. Crash: a backend killed with SIGKILL (the postmaster reinitialises)
# ---------------------------------------------------------------------------
%flushed = %{ usage_now() };
is(validate_n($node, $db, $k{ka}{key}, 40), 'valid', '40 calls after the last flush');
%since = ($k{ka}{id} => [ 40, 0 ]);
my $victim = start_psql($node, $db, q{SELECT 'victim', pg_sleep(60);});
my $victim_pid;
for (1 .. 100)
{
	$victim_pid = sql($node, $db,
		"SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT ''victim''%' AND pid <> pg_backend_pid()");
	last if $victim_pid;
	usleep(50_000);
}
ok($victim_pid, 'a backend to kill');
my $log_offset = -s $node->logfile;
kill 'KILL', $victim_pid;
finish_psql($victim);
ok(defined wait_for_log_within($node, qr/all server processes terminated; reinitializing/,
		$log_offset, 30), 'the postmaster reinitialises after the SIGKILL');
ok(defined wait_until($node, $db, 'SELECT 1', '1', 30), 'the server accepts connections again');
$pid = wait_for_worker($node, $db, 20);
ok(defined $pid, 'the worker comes back after the crash');
flush_usage($node, $db, 'flush after the SIGKILL crash');
$after = check_crash_bounds('SIGKILL crash', \%flushed, \%since);
is(validate_n($node, $db, $kd_key, 2), 'valid', 'the key made before still validates');
%expect = map { $_ => [ @{ $after->{$_} } ] } keys %$after;
$expect{$kd_id}[0] += 2;
flush_usage($node, $db);
is_deeply(usage_now(), \%expect, 'counting after the second crash is exact');

check_no_crash($node, 0, 'no process crashed except the one the test killed');

$node->stop;
done_testing();
