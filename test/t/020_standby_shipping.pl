# 020_standby_shipping.pl -- usage counted on hot standbys reaches the
# primary exactly once (SPEC 13; issue 15).
#
# One primary, two standbys of it (standby_a, standby_b) and a cascaded
# standby of standby_a.  apikeys.flush_interval is 200 ms everywhere.  Each
# scenario validates a key of its own, and compares the primary's
# apikeys.usage for it with the number of validations made, to the unit,
# then again after a wait of several flush intervals (no double apply):
#
#   1. pgbench on both standbys at once, valid and rejected calls (a revoked
#      key, a permission outside the key's scope); last_used_at follows;
#      apikeys.standby_batches and apikey_standby_status() agree
#   2. the shipping connection killed on the primary over and over under
#      load; killed while its batch waits on a lock (deterministic: the batch
#      is not applied and must be re-shipped once); the standby's worker
#      killed while its batch waits (the primary applies the orphaned batch:
#      the new worker's re-ship must be a duplicate)
#   3. a standby restarted (fast stop/start) between two loads, with counts
#      confirmed, a batch in flight and counts pending at the stop
#   4. the primary stopped in the middle of the load on both standbys and
#      started again: validations go on (the longest is reported), the status
#      shows the error and the pending counts, which arrive once it is back
#   5. a cascaded standby: without apikeys.primary_conninfo its upstream is
#      read-only, the status shows the error and the counts wait; set with
#      ALTER SYSTEM + pg_reload_conf, they arrive
#   6. promotion under load (standby_a): the promoted server has every
#      validation made on it, before and after the switch
#   7. promotion while a batch is in flight to a primary that does not answer
#      (standby_b; a lock holds the batch, as a hung primary would): the
#      promoted server applies it itself, without waiting for the old
#      primary, and still has every count exactly once after the old
#      primary lets go of the batch (applying it there, too late for the
#      new timeline)
#
# "A lock holds the batch": on the primary, an open transaction holds
# apikeys.standby_batches in ACCESS EXCLUSIVE mode, so _usage_ship() waits in
# its first statement; the test then kills one side or the other, or
# releases it.
#
# Why the standby restart is between two loads and not with clients
# connected: a fast shutdown ends a backend at its next interrupt check, which
# may come after apikey_validate counted the call and before the client got
# the row; the client then sees an error for a call that was counted, so no
# client can know the exact number made.  The primary stop and the
# promotions do not end the standby's sessions, so there the load runs
# across the event.
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
my $t_start = time;
my $SHIP_APP = 'apikeys usage shipping';
# "still equal after a wait": several flush intervals of 200 ms
my $settle_s = 1.5;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', join("\n",
	"shared_preload_libraries = 'apikeys'", 'max_worker_processes = 16',
	"log_statement = 'none'", 'apikeys.flush_interval = 200',
	'restart_after_crash = on',
	# allows_streaming sets 10 connections and 1 MB of buffers: too few for
	# pgbench on every standby plus the shipping connections
	'max_connections = 40', 'shared_buffers = 16MB'));
$primary->start;
create_extension($primary, $db);

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
my $bench_no = 0;

# start_bench(NODE, CLIENTS, TXNS, SCRIPT, VARS, [RATE]) -- pgbench -M
# prepared in the background, bounded by -t, paced at RATE transactions a
# second in all if given, with a per-transaction log; returns a handle.
sub start_bench
{
	my ($node, $clients, $txns, $script, $vars, $rate) = @_;
	my $n = ++$bench_no;
	my $file = $node->basedir . "/bench_$n.sql";
	my $prefix = $node->basedir . "/bench_$n.log";
	append_to_file($file, $script);
	my @cmd = (
		'pgbench', '-n', '-M', 'prepared', '-c', $clients, '-j', $clients,
		'-t', $txns, (defined $rate ? ('-R', $rate) : ()),
		'-l', '--log-prefix', $prefix, '-f', $file,
		(map { ('-D', "$_=$vars->{$_}") } sort keys %$vars),
		'-h', $node->host, '-p', $node->port, $db);
	my $h = {
		out => '', err => '', prefix => $prefix, total => $clients * $txns,
		label => $node->name . " ($clients clients x $txns)", t0 => time };
	$h->{run} = IPC::Run::start(\@cmd, '>', \$h->{out}, '2>', \$h->{err},
		IPC::Run::timeout(90));
	return $h;
}

# finish_bench(HANDLE) -- wait for it; a test that every transaction was
# processed (each checks its codes: a wrong code aborts the client); returns
# (transactions processed, longest transaction in ms without schedule lag,
# the end times of the transactions, in epoch seconds).
sub finish_bench
{
	my ($h) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	eval { $h->{run}->finish };
	if ($@)
	{
		$h->{run}->kill_kill;
		$h->{err} .= "\n$@";
	}
	my ($done) = $h->{out} =~ m{number of transactions actually processed: (\d+)/};
	$done //= 0;
	my $max_us = 0;
	my @ends;
	for my $f (glob("$h->{prefix}.*"))
	{
		for my $line (split /\n/, slurp_file($f))
		{
			# client_id txn_no time script_no epoch us [schedule_lag]
			my @f = split / /, $line;
			next unless defined $f[2] && $f[2] =~ /^\d+$/;
			my $us = $f[2] - (defined $f[6] && $f[6] =~ /^\d+$/ ? $f[6] : 0);
			$max_us = $us if $us > $max_us;
			push @ends, $f[4] + $f[5] / 1e6;
		}
	}
	is($done, $h->{total}, "pgbench on $h->{label}: every transaction done, every code as expected")
	  or diag("pgbench stdout:\n$h->{out}\nstderr:\n$h->{err}");
	note(sprintf('pgbench on %s: %d transactions in %.2fs, longest %.1f ms',
		$h->{label}, $done, time - $h->{t0}, $max_us / 1000));
	return ($done, $max_us / 1000, \@ends);
}

# a pgbench line that validates and checks the code: \set divides by zero,
# which aborts the client, when the code is not the expected one
sub check_line
{
	my ($args, $code) = @_;
	return "SELECT ((apikeys.apikey_validate($args)).code = '$code')::int AS ok \\gset\n"
	  . "\\set chk 1 / :ok\n";
}

my $usage_q = q{SELECT coalesce(sum(calls), 0) || '/' || coalesce(sum(rejected), 0)
	  FROM apikeys.usage WHERE key_id = '%s'};

# usage_is(NODE, ID, CALLS, REJECTED, NAME) -- the usage of one key, exactly.
sub usage_is
{
	my ($node, $id, $calls, $rejected, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	return is(sql($node, $db, sprintf($usage_q, $id)), "$calls/$rejected", $name);
}

# arrives(NODE, ID, CALLS, REJECTED, SECONDS, NAME) -- a test that the usage
# of one key reaches exactly CALLS/REJECTED within SECONDS, then that it is
# still exactly that after a wait of several flush intervals.
sub arrives
{
	my ($node, $id, $calls, $rejected, $seconds, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $took = wait_until($node, $db, sprintf($usage_q, $id), "$calls/$rejected", $seconds);
	ok(defined $took, sprintf('%s: %s has %d calls, %d rejected (%.2fs)',
		$name, $node->name, $calls, $rejected, $took // -1))
	  or diag('it has ' . sql($node, $db, sprintf($usage_q, $id)));
	usleep($settle_s * 1e6);
	usage_is($node, $id, $calls, $rejected,
		"$name: still exactly that after ${settle_s}s (no double apply)");
	return;
}

# ship(NODE, [LABEL]) -- apikeys.flush_usage() on NODE (a standby: asks for a
# ship and waits for it), bounded; a test that it returns true.
sub ship
{
	my ($node, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($ok, $out, $secs) = timed($node, $db, 'SELECT apikeys.flush_usage()', 20);
	return is($out, 't', sprintf('%sflush_usage() on %s returns true (%.2fs)',
		defined $label ? "$label: " : '', $node->name, $secs));
}

sub status_of
{
	my ($node, $cols) = @_;
	return sql($node, $db, "SELECT $cols FROM apikeys.apikey_standby_status()");
}

sub batches_of
{
	my ($standby_name, $cols) = @_;
	return sql($primary, $db,
		"SELECT $cols FROM apikeys.standby_batches WHERE standby = '$standby_name'");
}

# lock_batches() -- hold apikeys.standby_batches on the primary in ACCESS
# EXCLUSIVE mode in an open transaction: a batch being applied waits.
sub lock_batches
{
	my $bg = $primary->background_psql($db, timeout => 120);
	$bg->query_safe('BEGIN; LOCK TABLE apikeys.standby_batches IN ACCESS EXCLUSIVE MODE;');
	return $bg;
}

sub unlock_batches
{
	my ($bg) = @_;
	$bg->query_safe('COMMIT;');
	$bg->quit;
	return;
}

# shipping backends on the primary; with $waiting, only those whose batch
# waits on a lock.  By application_name, or by the query they run: the
# application_name of the server's primary_conninfo (the TAP clusters set it
# to the standby's name) may be kept.
my $SHIP_WHERE = "backend_type = 'client backend' AND pid <> pg_backend_pid()"
  . " AND (application_name = '$SHIP_APP' OR query LIKE '%apikeys._usage_ship(%')";
sub shipping_where
{
	my ($waiting) = @_;
	return $SHIP_WHERE . ($waiting ? " AND wait_event_type = 'Lock'" : '');
}

# wait_for_blocked_batch(SECONDS) -- wait until a batch waits on the lock;
# then 0.4 s more (two intervals), so that every standby with counts has
# sent its batch; returns the seconds or undef.
sub wait_for_blocked_batch
{
	my ($seconds) = @_;
	my $took = wait_until($primary, $db,
		'SELECT count(*) > 0 FROM pg_stat_activity WHERE ' . shipping_where(1), 't', $seconds);
	usleep(400_000) if defined $took;
	return $took;
}

sub terminate_shipping
{
	my ($waiting) = @_;
	return sql($primary, $db,
		'SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE '
		  . shipping_where($waiting)) + 0;
}

# ---------------------------------------------------------------------------
# Keys, standbys
# ---------------------------------------------------------------------------
my %k;
sub key
{
	my ($name, $extra) = @_;
	($k{$name}{id}, $k{$name}{key}) = create_key($primary, $db, 'ship', $name, $extra);
	return;
}
key($_) for qw(k1v k1r k2v k2r k3 k4 k4b k4c k5 k6a k6b);
key('k1s', "scope => 'verify'");
sql($primary, $db, "SELECT apikeys.apikey_revoke('$k{$_}{id}')") for qw(k1r k2r);

# kills the shipping backends every EVERY seconds for SECONDS; returns how
# many it killed (pg_stat_clear_snapshot: pg_stat_activity is otherwise read
# once per transaction)
sql($primary, $db, qq{
CREATE FUNCTION public.kill_shipping(seconds float8, every float8) RETURNS int
LANGUAGE plpgsql AS \$\$
DECLARE
	n int := 0;
	k int;
	t0 timestamptz := clock_timestamp();
BEGIN
	WHILE clock_timestamp() < t0 + make_interval(secs => seconds) LOOP
		PERFORM pg_stat_clear_snapshot();
		SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) INTO k
		  FROM pg_stat_activity WHERE $SHIP_WHERE;
		n := n + k;
		PERFORM pg_sleep(every);
	END LOOP;
	RETURN n;
END
\$\$});

$primary->backup('base');
my %node;
for my $name ('standby_a', 'standby_b')
{
	my $s = PostgreSQL::Test::Cluster->new($name);
	$s->init_from_backup($primary, 'base', has_streaming => 1);
	$s->start;
	$node{$name} = $s;
}
my ($sa, $sb) = @node{qw(standby_a standby_b)};
$sa->backup('cascade_base');
my $sc = PostgreSQL::Test::Cluster->new('cascade');
$sc->init_from_backup($sa, 'cascade_base', has_streaming => 1);
$sc->start;
$primary->wait_for_catchup($_) for ($sa, $sb);
# (wait_for_catchup from a standby waits for the cascade's status message)
ok(defined wait_until($sc, $db, "SELECT revoked_at IS NOT NULL FROM apikeys.keys WHERE id = '$k{k2r}{id}'", 't', 30),
	'the cascaded standby has replayed the keys');
is(sql($sc, $db, "SELECT (apikeys.apikey_validate('$k{k1r}{key}')).code"), 'revoked',
	'the cascaded standby has the keys and the revocations');
# (that validation of k1r on the cascade is counted: remembered below)
my $k1r_on_cascade = 1;
note(sprintf('setup: %.1fs', time - $t_start));

is(status_of($primary, 'in_recovery'), 'f', 'apikey_standby_status() works on the primary');
is(status_of($sa, 'in_recovery'), 't', '... and says in_recovery on a standby');

# ---------------------------------------------------------------------------
# 1. pgbench on two standbys at once
# ---------------------------------------------------------------------------
my $t_s = time;
my $s1_script = check_line(':kv', 'valid') . check_line(':kr', 'revoked')
  . check_line(':ks, :perm', 'insufficient_scope');
my %s1_vars = (kv => $k{k1v}{key}, kr => $k{k1r}{key}, ks => $k{k1s}{key},
	perm => 'lists:read');
# about 2 s each: several flushes happen during the load
my $ba = start_bench($sa, 4, 400, $s1_script, \%s1_vars, 800);
my $bb = start_bench($sb, 4, 300, $s1_script, \%s1_vars, 600);
my ($na) = finish_bench($ba);
my ($nb) = finish_bench($bb);
my $n1 = $na + $nb;
ship($sa);
ship($sb);
arrives($primary, $k{k1v}{id}, $n1, 0, 10, 'two standbys, valid key');
usage_is($primary, $k{k1r}{id}, 0, $n1, 'two standbys, revoked key: every call rejected, exactly');
usage_is($primary, $k{k1s}{id}, 0, $n1, 'two standbys, permission outside the scope: rejected, exactly');
is(sql($primary, $db, "SELECT last_used_at IS NOT NULL FROM apikeys.keys WHERE id = '$k{k1v}{id}'"),
	't', 'last_used_at is set on the primary by the shipped valid calls');
is(sql($primary, $db, "SELECT last_used_at IS NULL FROM apikeys.keys WHERE id = '$k{k1r}{id}'"),
	't', '... and not by rejected calls');
is(batches_of('standby_a', "calls || '/' || rejected || ' ' || (batches > 0) || ' ' || (last_batch > 0)"),
	"$na/" . (2 * $na) . ' true true', "standby_batches: standby_a shipped $na calls, "
	  . 2 * $na . ' rejected');
is(batches_of('standby_b', "calls || '/' || rejected"), "$nb/" . (2 * $nb),
	"standby_batches: standby_b shipped $nb calls, " . 2 * $nb . ' rejected');
is(status_of($sa, "shipped_calls || '/' || shipped_rejected || ' ' || pending_calls || '/'"
		. " || pending_rejected || ' ' || pending_keys || ' ' || lag_seconds"),
	"$na/" . (2 * $na) . ' 0/0 0 0', "apikey_standby_status() on standby_a: shipped $na/"
	  . 2 * $na . ', nothing pending, no lag');
is(status_of($sa, 'source::text') . ' ' . status_of($sa, 'batches'),
	batches_of('standby_a', 'source::text') . ' ' . batches_of('standby_a', 'batches'),
	'... its source and batch count are the ones the primary recorded');
note(sprintf('scenario 1: %.1fs', time - $t_s));

# ---------------------------------------------------------------------------
# 2. The shipping connection killed
# ---------------------------------------------------------------------------
$t_s = time;
my $s2_script = check_line(':kv', 'valid');
$ba = start_bench($sa, 2, 600, $s2_script, { kv => $k{k4}{key} }, 400);
$bb = start_bench($sb, 2, 600, $s2_script, { kv => $k{k4}{key} }, 400);
# (every 10 ms: a shipping connection may live only while it ships)
my $kills = sql($primary, $db, 'SELECT public.kill_shipping(2.5, 0.01)');
($na) = finish_bench($ba);
($nb) = finish_bench($bb);
cmp_ok($kills, '>=', 3, "the shipping connections were killed $kills times during the load");
ship($sa);
ship($sb);
arrives($primary, $k{k4}{id}, $na + $nb, 0, 10, 'shipping connections killed under load');
note('standby_batches after the kills: '
	  . sql($primary, $db, q{SELECT string_agg(standby || ' batches ' || batches || ' duplicates '
	  || duplicates, ', ' ORDER BY standby) FROM apikeys.standby_batches}));

# killed while its batch waits on the primary: that batch is not applied
# (the backend dies waiting for the lock), and is applied once when re-sent
my $before = batches_of('standby_a', "batches || ' ' || duplicates");
my $lock = lock_batches();
is(validate_n($sa, $db, $k{k4b}{key}, 100), 'valid', '100 calls on standby_a while the primary holds standby_batches');
ok(defined wait_for_blocked_batch(10), "standby_a's batch waits on the lock on the primary");
cmp_ok(terminate_shipping(1), '>=', 1, 'the waiting shipping backend is terminated');
usleep(500_000);    # the standby reconnects and ships again, and waits again
unlock_batches($lock);
ship($sa, 'after the kill mid-batch');
arrives($primary, $k{k4b}{id}, 100, 0, 10, 'shipping backend killed mid-batch');
my ($b0, $d0) = split / /, $before;
my ($b1, $d1) = split / /, batches_of('standby_a', "batches || ' ' || duplicates");
ok($b1 > $b0 && $d1 == $d0, "standby_batches: the re-sent batch was applied ($b0 -> $b1 batches), "
	  . "as a new one: the killed backend had applied nothing ($d0 -> $d1 duplicates)");

# the standby's worker killed while its batch waits: the primary applies
# the orphaned batch when the lock goes; the new worker must not apply it
# again (nor lose it)
my $dups = batches_of('standby_a', 'duplicates');
$lock = lock_batches();
is(validate_n($sa, $db, $k{k4c}{key}, 100), 'valid', '100 calls on standby_a while the primary holds standby_batches');
ok(defined wait_for_blocked_batch(10), "standby_a's batch waits on the lock on the primary");
my ($wpid) = worker_pids($sa, $db);
is(sql($sa, $db, "SELECT pg_terminate_backend($wpid)"), 't', "terminate standby_a's worker");
my $t0 = time;
my $new_wpid = wait_for_worker($sa, $db, 10, $wpid);
ok(defined $new_wpid, sprintf("the worker exits while its batch waits, and a new one starts (%.2fs)", time - $t0));
usleep(500_000);
unlock_batches($lock);
ship($sa, 'after the worker was killed mid-batch');
arrives($primary, $k{k4c}{id}, 100, 0, 10, "standby's worker killed mid-batch");
my $dups_after = batches_of('standby_a', 'duplicates');
cmp_ok($dups_after, '>', $dups, "the retry path ran: standby_batches.duplicates $dups -> $dups_after "
	  . '(the orphaned batch was applied by the old backend, the re-sent one ignored)');
note(sprintf('scenario 2: %.1fs', time - $t_s));

# ---------------------------------------------------------------------------
# 3. A standby restarted in the middle
# ---------------------------------------------------------------------------
$t_s = time;
my $s3_vars = { kv => $k{k3}{key} };
$bb = start_bench($sb, 2, 500, $s2_script, $s3_vars);
my ($n3a) = finish_bench($bb);
# a batch in flight, held by the lock, and counts pending behind it
$lock = lock_batches();
is(validate_n($sb, $db, $k{k3}{key}, 77), 'valid', '77 calls on standby_b while the primary holds standby_batches');
ok(defined wait_for_blocked_batch(10), "standby_b's batch waits on the lock on the primary");
is(validate_n($sb, $db, $k{k3}{key}, 23), 'valid', '23 more calls pending behind it');
$t0 = time;
{
	local $ENV{PGCTLTIMEOUT} = 30;
	ok($sb->stop('fast', fail_ok => 1), 'standby_b stops (fast) with its batch in flight');
}
my $stop_s = time - $t0;
cmp_ok($stop_s, '<', 10, sprintf('... in %.2fs', $stop_s));
unlock_batches($lock);
$dups = batches_of('standby_b', 'duplicates');
$sb->start;
ok(defined wait_for_worker($sb, $db, 10), 'standby_b is back with its worker');
$bb = start_bench($sb, 2, 500, $s2_script, $s3_vars);
my ($n3b) = finish_bench($bb);
ship($sb, 'after the restart');
arrives($primary, $k{k3}{id}, $n3a + 100 + $n3b, 0, 10, 'standby restarted in the middle');
$dups_after = batches_of('standby_b', 'duplicates');
cmp_ok($dups_after, '>', $dups, "the batch in flight at the stop was re-sent after the start and ignored: "
	  . "standby_batches.duplicates $dups -> $dups_after");
note(sprintf('scenario 3: %.1fs', time - $t_s));

# ---------------------------------------------------------------------------
# 4. The primary stopped in the middle of the load
# ---------------------------------------------------------------------------
$t_s = time;
my $s4_script = check_line(':kv', 'valid') . check_line(':kr', 'revoked');
my %s4_vars = (kv => $k{k2v}{key}, kr => $k{k2r}{key});
my %log_at = map { $_ => -s $node{$_}->logfile } keys %node;
# about 10 s each: a stop and a start can take seconds each on a busy machine
$ba = start_bench($sa, 2, 2000, $s4_script, \%s4_vars, 400);
$bb = start_bench($sb, 2, 2000, $s4_script, \%s4_vars, 400);
usleep(1_000_000);
$primary->stop;
my $t_down = time;
note(sprintf('primary stopped %.2fs into the load', $t_down - $ba->{t0}));
my $down_q = 'connection_errors > 0 AND last_error IS NOT NULL AND pending_calls > 0'
  . ' AND pending_rejected > 0 AND lag_seconds > 0 AND NOT connected';
for my $s ($sa, $sb)
{
	my $took = wait_until($s, $db, "SELECT $down_q FROM apikeys.apikey_standby_status()", 't', 5);
	ok(defined $took, sprintf('%s, primary down: connection_errors > 0, last_error set, counts pending (%.2fs)',
		$s->name, $took // -1))
	  or diag(status_of($s, '*'));
}
for my $s ($sa, $sb)
{
	my $lag = status_of($s, 'lag_seconds');
	my $bound = time - $t_down + 5;
	ok($lag > 0 && $lag < $bound, sprintf('%s: lag_seconds %s is about the time since the last ship (< %.1f)',
		$s->name, $lag, $bound));
}
note('standby_a while the primary is down: '
	  . status_of($sa, q{'pending ' || pending_calls || '/' || pending_rejected || ', errors '
	  || connection_errors || ', lag ' || round(lag_seconds::numeric, 2) || ', last_error: ' || last_error}));
ok(defined wait_for_log_within($sa, qr/apikeys could not ship usage to the primary/, $log_at{standby_a}, 5),
	'standby_a logs that it could not ship usage');
my $pending1 = status_of($sa, 'pending_calls');
usleep(300_000);
my $pending2 = status_of($sa, 'pending_calls');
cmp_ok($pending2, '>', $pending1, "the pending calls keep growing ($pending1, then $pending2): validations go on");
# down for at least 1.5 s: several intervals
my $rest = 1.5 - (time - $t_down);
usleep($rest * 1e6) if $rest > 0;
my $t_stop_done = time;
$primary->start;
my $t_up = time;
note(sprintf('primary down for %.2fs, started again %.2fs into the load', $t_up - $t_down, $t_up - $ba->{t0}));
my ($n4a, $max_a, $ends_a) = finish_bench($ba);
my ($n4b, $max_b, $ends_b) = finish_bench($bb);
for my $e ([ 'standby_a', $ends_a ], [ 'standby_b', $ends_b ])
{
	my $while_down = grep { $_ > $t_down && $_ < $t_stop_done } @{ $e->[1] };
	my $after_up = grep { $_ > $t_up } @{ $e->[1] };
	ok($while_down > 0 && $after_up > 0, "$e->[0] validated while the primary was down "
		  . "($while_down transactions) and after it was back ($after_up)");
}
my $longest = $max_a > $max_b ? $max_a : $max_b;
cmp_ok($longest, '<', 2000, sprintf('no validation waited while the primary was down: the longest transaction took %.1f ms', $longest));
ship($sa, 'primary back');
ship($sb, 'primary back');
arrives($primary, $k{k2v}{id}, $n4a + $n4b, 0, 10, 'primary stopped and started, valid key');
usage_is($primary, $k{k2r}{id}, 0, $n4a + $n4b, 'primary stopped and started, revoked key: exact');
for my $s ($sa, $sb)
{
	is(status_of($s, "pending_calls || '/' || pending_rejected || ' ' || pending_keys || ' ' || lag_seconds"
			. " || ' ' || (last_shipped_at > last_error_at)"),
		'0/0 0 0 true', $s->name . ': nothing pending any more, shipped since the last error');
}
ok(defined wait_for_log_within($sa, qr/apikeys is shipping usage to the primary again/, $log_at{standby_a}, 5),
	'standby_a logs that it ships again');
note(sprintf('scenario 4: %.1fs', time - $t_s));

# ---------------------------------------------------------------------------
# 5. A cascaded standby
# ---------------------------------------------------------------------------
$t_s = time;
my $sa_port = $sa->port;
my $p_port = $primary->port;
is(validate_n($sc, $db, $k{k5}{key}, 50), 'valid', '50 calls on the cascaded standby');
my $took = wait_until($sc, $db,
	'SELECT last_error IS NOT NULL AND pending_calls = 50 FROM apikeys.apikey_standby_status()', 't', 5);
ok(defined $took, 'without apikeys.primary_conninfo: the cascaded standby reports an error, 50 calls pending')
  or diag(status_of($sc, '*'));
my $err = status_of($sc, 'last_error');
like($err, qr/read.only|recovery|standby/i, "... the error says its upstream is read-only: $err");
like(status_of($sc, 'target'), qr/port=$sa_port\b/, '... its target is its upstream (primary_conninfo)');
usleep($settle_s * 1e6);
usage_is($primary, $k{k5}{id}, 0, 0, '... and the counts wait: the primary has none');
is(status_of($sc, 'pending_calls'), '50', '... they are still pending');
(my $p_conn = $primary->connstr($db)) =~ s/'/''/g;
sql($sc, $db, "ALTER SYSTEM SET apikeys.primary_conninfo = '$p_conn'");
sql($sc, $db, 'SELECT pg_reload_conf()');
$took = wait_until($sc, $db, "SELECT target ~ 'port=$p_port' FROM apikeys.apikey_standby_status()", 't', 5);
ok(defined $took, 'apikeys.primary_conninfo set with ALTER SYSTEM + reload: the target is the primary');
my $bc = start_bench($sc, 2, 300, $s2_script, { kv => $k{k5}{key} });
my ($n5) = finish_bench($bc);
ship($sc, 'cascade');
arrives($primary, $k{k5}{id}, 50 + $n5, 0, 10, 'cascaded standby');
usage_is($primary, $k{k1r}{id}, 0, $n1 + $k1r_on_cascade, '... with its earlier call of k1r');
is(batches_of('cascade', "calls || '/' || rejected"), (50 + $n5) . "/$k1r_on_cascade",
	'standby_batches: one row for the cascaded standby with what it shipped');
is(status_of($sc, "pending_calls || ' ' || (last_shipped_at > last_error_at)"), '0 true',
	'... nothing pending, shipped since the last error');
note(sprintf('scenario 5: %.1fs', time - $t_s));
$sc->stop;

# ---------------------------------------------------------------------------
# 6. Promotion under load
# ---------------------------------------------------------------------------
$t_s = time;
# about 4 s
$ba = start_bench($sa, 2, 1000, $s2_script, { kv => $k{k6a}{key} }, 500);
usleep(1_500_000);
my $promote_at = sql($primary, $db, q{SELECT to_char(clock_timestamp(), 'HH24:MI:SS.MS')});
$sa->promote;
ok(defined wait_until($sa, $db, 'SELECT pg_is_in_recovery()', 'f', 30), 'standby_a promoted under load');
note(sprintf('promoted %.2fs into the load', time - $ba->{t0}));
my ($n6a) = finish_bench($ba);
ship($sa, 'promoted');
arrives($sa, $k{k6a}{id}, $n6a, 0, 10, 'promoted under load: every validation made on it');
# what the old primary applied of standby_a's batches, against what the
# promoted server replayed of that bookkeeping: a batch applied there and
# not replayed here is lost to the promoted server unless it applied it again
my $row_q = q{SELECT last_batch || ' (' || to_char(last_batch_at, 'HH24:MI:SS.MS') || ')'
	  FROM apikeys.standby_batches WHERE standby = 'standby_a'};
note(sprintf('standby_a promoted at %s; the old primary applied its batches up to %s, '
	  . 'the promoted server replayed them up to %s, and has %s of k6a (the old primary %s)',
	$promote_at, sql($primary, $db, $row_q), sql($sa, $db, $row_q),
	sql($sa, $db, sprintf($usage_q, $k{k6a}{id})), sql($primary, $db, sprintf($usage_q, $k{k6a}{id}))));
is(status_of($sa, "in_recovery || ' ' || pending_calls"), 'false 0', 'its status: not in recovery, nothing pending');
note(sprintf('scenario 6: %.1fs', time - $t_s));

# ---------------------------------------------------------------------------
# 7. Promotion while a batch is in flight to a primary that does not answer
# ---------------------------------------------------------------------------
$t_s = time;
$bb = start_bench($sb, 2, 1000, $s2_script, { kv => $k{k6b}{key} }, 500);
usleep(800_000);
$lock = lock_batches();
ok(defined wait_for_blocked_batch(10), "standby_b's batch waits on the lock on the primary");
usleep(500_000);
$sb->promote;
ok(defined wait_until($sb, $db, 'SELECT pg_is_in_recovery()', 'f', 30),
	'standby_b promoted under load, its batch in flight');
note(sprintf('promoted %.2fs into the load', time - $bb->{t0}));
my ($n6b) = finish_bench($bb);
# with no flush_usage(): it would wait for the worker
$took = wait_until($sb, $db, sprintf($usage_q, $k{k6b}{id}), "$n6b/0", 15);
ok(defined $took, sprintf('the promoted server has every validation made on it, the batch in flight '
	  . 'included, while the old primary still holds that batch (%.2fs)', $took // -1))
  or diag('it has ' . sql($sb, $db, sprintf($usage_q, $k{k6b}{id})) . "; status: "
	  . status_of($sb, '*') . "\npg_stat_activity of the promoted server: "
	  . sql($sb, 'postgres', q{SELECT string_agg(backend_type || ' ' || coalesce(wait_event_type, '-') || '/'
	  || coalesce(wait_event, '-') || ' ' || left(query, 60), E'\n') FROM pg_stat_activity}));
unlock_batches($lock);
note('the old primary let go of the batch; it has ' . sql($primary, $db, sprintf($usage_q, $k{k6b}{id}))
	  . ' of that key');
ship($sb, 'promoted with a batch in flight');
arrives($sb, $k{k6b}{id}, $n6b, 0, 5, 'promoted with a batch in flight, after the old primary answered');
is(status_of($sb, "in_recovery || ' ' || pending_calls"), 'false 0', 'its status: not in recovery, nothing pending');
note(sprintf('scenario 7: %.1fs', time - $t_s));

for my $n ($primary, $sa, $sb, $sc)
{
	check_no_crash($n, 0, 'no process crashed on ' . $n->name);
}
$_->stop for ($sa, $sb, $primary);
note(sprintf('total: %.1fs', time - $t_start));
done_testing();
