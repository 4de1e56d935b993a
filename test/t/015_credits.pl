# 015_credits.pl -- credits (SPEC section 11) under concurrency, across a
# clean restart, two crashes and a UTC midnight, on one cluster with
# apikeys.credit_lease = 10 (so the crash bound is visible) and
# apikeys.flush_interval = 1 h (nothing settles unless flush_usage() asks).
#
#   1. 16 pgbench clients charge 4 keys of one owner with a balance of 500,
#      1600 attempts: exactly 500 are valid, the other 1100 get
#      insufficient_credits, and so does every later charge.  The script
#      inserts each outcome in the charge's own transaction, so the counts
#      are exact.  After flush_usage() apikeys.credit_usage (what
#      apikey_credit_usage reports) holds exactly the valid charges of each
#      key, 500 in all, the balance is 0.0 and its row holds nothing,
#      leased or not.
#   2. Clean restart (fast): the balance and a key's quota are exactly what
#      they were, charges go on, nothing is written off, and the spend of
#      before and after the restart is all settled.
#   3. Crash: an immediate stop and start after 3 committed charges, then a
#      backend that charged 4 and committed killed with SIGKILL: the
#      balance is never above what it was before the crash, at most
#      credit_lease below it, and what was lost is in credits_written_off
#      events (after the SIGKILL: one event, of what the row had leased);
#      charges go on.
#   4. A daily quota of 2 crossing 00:00 UTC: the server restarts with its
#      clock shifted to 10 s before midnight; 2 charges, the third gets
#      insufficient_credits; after midnight the quota is 2 again (a charge
#      leaves 1), quota_refilled is audited once, and the spend is split
#      between the two UTC days.  Skipped when no C compiler builds the
#      clock shim (see section 4 for why not libfaketime).
#
# About 25 s.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use POSIX qw(floor);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $lease = 10;
my $db = 'postgres';
my $node = new_node('credits',
	"apikeys.credit_lease = $lease",
	"apikeys.flush_interval = '1h'");
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'the database gets its worker');

# balance(OWNER) -- the owner's email_credit balance as apikey_credits shows it
sub balance
{
	my ($owner) = @_;
	return sql($node, $db,
		"SELECT COALESCE(apikeys.apikey_credits('$owner')->>'email_credit', 'none')");
}

# charge(KEY, [COST]) -- one charge of email_credit in its own transaction;
# returns "code remaining"
sub charge
{
	my ($key, $cost) = @_;
	$cost //= 1;
	return sql($node, $db, qq{
		SELECT (c).code || ' ' || (c).remaining
		  FROM (SELECT apikeys.apikey_charge('$key', 'email_credit', $cost) AS c) s});
}

# charge_n(KEY, N) -- N charges of 1 in one statement (one transaction);
# returns "code:count" for each code seen, comma-separated
sub charge_n
{
	my ($key, $n) = @_;
	return sql($node, $db, qq{
		SELECT string_agg(code || ':' || n, ',' ORDER BY code)
		  FROM (SELECT (c).code, count(*) AS n
		          FROM (SELECT apikeys.apikey_charge('$key', 'email_credit') AS c
		                  FROM generate_series(1, $n)) s
		         GROUP BY 1) t});
}

# pool_row(OWNER) -- "available leased" of the owner's email_credit balance row
sub pool_row
{
	my ($owner) = @_;
	return sql($node, $db, qq{
		SELECT available::numeric(18,1) || ' ' || leased::numeric(18,1) FROM apikeys.credit_pools
		 WHERE owner = '$owner' AND credit = 'email_credit' AND key_id IS NULL});
}

# audit_events(OWNER, EVENT) -- "count total" of EVENT for OWNER (total: the
# sum of detail->>'amount')
sub audit_events
{
	my ($owner, $event) = @_;
	return sql($node, $db, qq{
		SELECT count(*) || ' ' || COALESCE(sum((detail->>'amount')::numeric), 0)::numeric(18,1)
		  FROM apikeys.audit WHERE owner = '$owner' AND event = '$event'});
}

# spent_of(OWNER, [BY_DAY]) -- "key_id [day] spent, ..." of email_credit
# from apikeys.credit_usage (what the settle pass wrote), per key (and day)
sub spent_of
{
	my ($owner, $by_day) = @_;
	my $group = $by_day ? 'u.key_id, u.day' : 'u.key_id';
	return sql($node, $db, qq{
		SELECT string_agg(line, ', ' ORDER BY line) FROM (
			SELECT concat_ws(' ', $group, sum(u.spent)::numeric(18,1)) AS line
			  FROM apikeys.credit_usage AS u JOIN apikeys.keys AS k ON k.id = u.key_id
			 WHERE k.owner = '$owner' AND u.credit = 'email_credit'
			 GROUP BY $group) s});
}

# ---------------------------------------------------------------------------
# 1. 16 clients racing for a balance of 500
# ---------------------------------------------------------------------------
my $N = 500;
my ($clients, $txns) = (16, 100);
my $attempts = $clients * $txns;
is(sql($node, $db, "SELECT apikeys.apikey_credit_add('bench', 'email_credit', $N)"),
	"$N.0", "owner bench gets a balance of $N");
my @keys = create_keys($node, $db, 'bench', 4);
my %n_of_id = map { $keys[$_][0] => $_ + 1 } 0 .. 3;
sql($node, $db, 'CREATE TABLE public.outcomes (n int NOT NULL, code text, remaining numeric)');
# each client charges one of the keys (4 clients per key); the outcome is
# inserted in the charge's own transaction
run_pgbench($node, $db, $clients, $txns, <<'EOS', {});
\set k :client_id % 4 + 1
INSERT INTO public.outcomes (n, code, remaining)
SELECT t.n, c.code, c.remaining
  FROM public.test_keys AS t, LATERAL apikeys.apikey_charge(t.key, 'email_credit') AS c
 WHERE t.n = :k;
EOS
is(sql($node, $db, "SELECT string_agg(code || ':' || n, ',' ORDER BY code)
	FROM (SELECT code, count(*) AS n FROM public.outcomes GROUP BY code) s"),
	"insufficient_credits:" . ($attempts - $N) . ",valid:$N",
	"$attempts charges over a balance of $N: exactly $N valid, the others insufficient_credits");
my %valid_of = map { split /\|/ } split /\n/, sql($node, $db,
	"SELECT n, count(*) FROM public.outcomes WHERE code = 'valid' GROUP BY n ORDER BY n");
note('valid charges per key: ' . join(', ', map { "$_: " . ($valid_of{$_} // 0) } 1 .. 4));
is(sql($node, $db, "SELECT min(remaining) || ' ' || max(remaining) FROM public.outcomes WHERE code <> 'valid'"),
	'0.0 0.0', 'every insufficient_credits outcome shows 0 remaining');
is(sql($node, $db, "SELECT min(remaining) FROM public.outcomes WHERE code = 'valid'"),
	'0.0', 'the charge that took the last unit shows 0 remaining');
is(balance('bench'), '0.0', 'apikey_credits shows a balance of 0.0');
my @after = map { charge_n($_->[1], 3) } @keys;
is_deeply(\@after, [ ('insufficient_credits:3') x 4 ],
	'every later charge of each key gets insufficient_credits');

flush_usage($node, $db, 'flush_usage() settles the spent credits');
my %spent_of = map { my ($id, $s) = split / /; ($n_of_id{$id} => $s + 0) } split /, /, spent_of('bench');
is_deeply(\%spent_of, { map { $_ => $valid_of{$_} + 0 } keys %valid_of },
	'apikeys.credit_usage: each key spent exactly its valid charges');
my $total = 0;
$total += $_ for values %spent_of;
is($total, $N, "the keys' spend adds up to $N");
is(pool_row('bench'), '0.0 0.0', 'the balance row holds nothing, leased or not, once settled');

# ---------------------------------------------------------------------------
# 2. Clean restart
# ---------------------------------------------------------------------------
sql($node, $db, "SELECT apikeys.apikey_credit_add('steady', 'email_credit', 1000)");
my ($ks_id, $ks_key) = create_key($node, $db, 'steady', 'quota 100');
sql($node, $db, "SELECT apikeys.apikey_quota_set('$ks_id', 'email_credit', 100)");
is(charge_n($ks_key, 37), 'valid:37', '37 charges of a key with a quota of 100');
is(charge($ks_key), 'valid 62.0', '... and one more: remaining is the quota left, 62.0');
is(balance('steady'), '962.0', 'the balance is 962.0');
$node->restart;    # fast mode: a clean shutdown
ok(!-e $node->data_dir . '/pg_stat/apikeys_credits.stat',
	'the credits saved at shutdown were read back and their file removed');
ok(defined wait_for_worker($node, $db, 10), 'the worker is back after the restart');
is(balance('steady'), '962.0', 'after a clean restart the balance is exactly 962.0');
is(charge($ks_key), 'valid 61.0', 'a charge after the restart: the quota left is exactly 61.0');
is(charge_n($ks_key, 3), 'valid:3', '... and 3 more charges');
is(balance('steady'), '958.0', 'the balance is 958.0');
is(balance('bench'), '0.0', 'the spent balance stays 0.0');
is(audit_events('steady', 'credits_written_off'), '0 0.0', 'a clean restart writes nothing off');
flush_usage($node, $db);
is(spent_of('steady'), "$ks_id 42.0",
	'apikeys.credit_usage has all 42 charges, from before and after the restart');

# ---------------------------------------------------------------------------
# 3. Crashes: what committed charges spent is never given back, and an
#    owner loses at most credit_lease of unspent credits, audited
# ---------------------------------------------------------------------------
# check_crash(OWNER, KEY, BEFORE, ROW_BEFORE, LABEL) -- after a crash the
# balance is not above BEFORE and at most credit_lease below it; whatever
# was lost is written off, audited; the next charge takes 1 from what is left.
# Returns the credits_written_off events: "count total".
sub check_crash
{
	my ($owner, $key, $before, $row_before, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $after = balance($owner);
	note("$label: balance $before before, $after after (the row had available, leased: $row_before)");
	ok($after <= $before, "$label: the balance ($after) is not above the balance before ($before)");
	ok($before - $after <= $lease,
		"$label: the balance lost " . ($before - $after) . ": at most credit_lease ($lease)");
	is(charge($key), 'valid ' . sprintf('%.1f', $after - 1), "$label: the next charge takes 1 of $after");
	is(balance($owner), sprintf('%.1f', $after - 1), "$label: and the balance is " . ($after - 1));
	my $events = audit_events($owner, 'credits_written_off');
	my ($n, $written_off) = split / /, $events;
	ok($before - $after == 0 || ($n >= 1 && $written_off >= $before - $after),
		"$label: what the crash cost (" . ($before - $after) . ") is in credits_written_off events ($events)");
	return $events;
}

# an immediate stop, after 3 charges in 3 committed transactions
sql($node, $db, "SELECT apikeys.apikey_credit_add('crash1', 'email_credit', 1000)");
my ($k1_id, $k1_key) = create_key($node, $db, 'crash1', 'immediate');
is(join(',', map { charge($k1_key) } 1 .. 3), 'valid 999.0,valid 998.0,valid 997.0',
	'3 charges in 3 transactions');
my $before = balance('crash1');
$node->stop('immediate');
$node->start;
my $imm_events = check_crash('crash1', $k1_key, $before, pool_row('crash1'), 'immediate stop');
# an immediate stop is a crash: shared memory is not saved (it was, before
# the dump checked pg_control), so the lease in memory is written off
is((split / /, $imm_events)[0], 1,
	'immediate stop: the lease that was in memory is written off, once');

# a SIGKILLed backend that charged and committed: 4 charges leave 6 of the
# lease of 10 (more than half: no second lease asked for yet)
sql($node, $db, "SELECT apikeys.apikey_credit_add('crash2', 'email_credit', 1000)");
my ($k2_id, $k2_key) = create_key($node, $db, 'crash2', 'sigkill');
my $victim = $node->background_psql($db);
is($victim->query_safe(qq{
	SELECT string_agg((c).code, ',') FROM (SELECT apikeys.apikey_charge('$k2_key', 'email_credit') AS c
	                                         FROM generate_series(1, 4)) s}),
	'valid,valid,valid,valid', 'a session charges 4 and commits');
my $victim_pid = $victim->query_safe('SELECT pg_backend_pid()');
$before = balance('crash2');
is($before, '996.0', 'the balance is 996.0');
my $row = pool_row('crash2');
my $log_offset = -s $node->logfile;
ok(kill('KILL', $victim_pid), "kill -9 its backend ($victim_pid)");
eval { $victim->quit };
ok(defined wait_for_log_within($node, qr/all server processes terminated; reinitializing/,
		$log_offset, 30), 'the postmaster reinitialises after the SIGKILL');
ok(defined wait_until($node, $db, 'SELECT 1', '1', 30), 'the server accepts connections again');
is(check_crash('crash2', $k2_key, $before, $row, 'SIGKILL'), '1 ' . (split / /, $row)[1],
	"SIGKILL: one credits_written_off event, of what the row had leased ($row)");
ok(defined wait_for_worker($node, $db, 20), 'the worker is back after the crash');

check_no_crash($node, 0, 'no process crashed except the one the test killed');

# ---------------------------------------------------------------------------
# 4. A daily quota crossing 00:00 UTC
# ---------------------------------------------------------------------------
# The refill is the worker's, so the background worker must see the
# shifted clock.  Under libfaketime (010_midnight.pl) it does not on
# PostgreSQL 15: client backends get the fake time, but background workers
# and auxiliary processes keep the real one (pg_stat_activity.backend_start
# shows it), as the postmaster forks them in a signal handler that runs
# inside libfaketime's select() wrapper, where faking is off.  So this test
# preloads a shim of its own, built here with cc, that adds a fixed number
# of seconds to the wall clock (gettimeofday, time, clock_gettime of
# CLOCK_REALTIME) in every process.
my $shim = $node->basedir . '/clock_shift.so';
my $shim_src = $node->basedir . '/clock_shift.c';
PostgreSQL::Test::Utils::append_to_file($shim_src, <<'EOC');
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long shift;
static int shift_known;

static long
get_shift(void)
{
	if (!shift_known)
	{
		const char *s = getenv("APIKEYS_TEST_CLOCK_SHIFT");

		shift = s ? atol(s) : 0;
		shift_known = 1;
	}
	return shift;
}

int
clock_gettime(clockid_t id, struct timespec *ts)
{
	static int (*real) (clockid_t, struct timespec *);
	int			r;

	if (!real)
		real = (int (*) (clockid_t, struct timespec *)) dlsym(RTLD_NEXT, "clock_gettime");
	r = real(id, ts);
	if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
		ts->tv_sec += get_shift();
	return r;
}

int
gettimeofday(struct timeval *restrict tv, void *restrict tz)
{
	static int (*real) (struct timeval *, void *);
	int			r;

	if (!real)
		real = (int (*) (struct timeval *, void *)) dlsym(RTLD_NEXT, "gettimeofday");
	r = real(tv, tz);
	if (r == 0 && tv)
		tv->tv_sec += get_shift();
	return r;
}

time_t
time(time_t *t)
{
	struct timeval tv;

	gettimeofday(&tv, NULL);
	if (t)
		*t = tv.tv_sec;
	return tv.tv_sec;
}
EOC
my ($cc_ok, $cc_out) = (0, '');
eval {
	$cc_ok = IPC::Run::run([ 'cc', '-shared', '-fPIC', '-O1', '-o', $shim, $shim_src, '-ldl' ],
		'>', \$cc_out, '2>&1', IPC::Run::timeout(60));
};
SKIP:
{
	skip "no C compiler to build the clock shim: $cc_out $@", 1 unless $cc_ok && -e $shim;

	# restart with the server's clock LEAD seconds before the next 00:00 UTC
	my $lead_s = 10;
	$node->stop;
	my $now = time;
	my $midnight = (floor(($now + $lead_s) / 86400) + 1) * 86400;
	my $offset = int($midnight - $lead_s - $now);
	{
		local $ENV{LD_PRELOAD} = $shim;
		local $ENV{APIKEYS_TEST_CLOCK_SHIFT} = $offset;
		$node->start;
	}
	my $midnight_sql = "to_timestamp($midnight)";
	my $to_midnight = sub {
		return sql($node, $db,
			"SELECT round(extract(epoch FROM $midnight_sql - clock_timestamp())::numeric, 3)");
	};
	my ($day1, $day2) = split / /, sql($node, $db,
		"SELECT (($midnight_sql AT TIME ZONE 'UTC')::date - 1) || ' ' || ($midnight_sql AT TIME ZONE 'UTC')::date");
	my $left = $to_midnight->();
	ok($left > 0 && $left <= $lead_s + 5,
		"the server's clock is ${left}s before 00:00 UTC of $day2");
	ok(defined wait_for_worker($node, $db, 10), 'the worker is back');
	is(sql($node, $db, "SELECT count(*) FROM pg_stat_activity
		WHERE backend_type = 'apikeys worker' AND abs(extract(epoch FROM clock_timestamp() - backend_start)) < 60"),
		'1', 'the apikeys worker runs on the shifted clock too');

	sql($node, $db, "SELECT apikeys.apikey_credit_add('midnight', 'email_credit', 100)");
	my ($km_id, $km_key) = create_key($node, $db, 'midnight', 'daily 2');
	sql($node, $db, "SELECT apikeys.apikey_quota_set('$km_id', 'email_credit', 2, 'daily')");
	is(charge($km_key), 'valid 1.0', "$day1: the first charge leaves 1.0 of the daily quota of 2");
	is(charge($km_key), 'valid 0.0', "$day1: the second leaves 0.0");
	is(charge($km_key), 'insufficient_credits 0.0', "$day1: the third gets insufficient_credits");
	$left = $to_midnight->();
	ok($left > 0, "the $day1 charges ended before midnight (${left}s left)");
	is(audit_events('midnight', 'quota_refilled'), '0 0.0', 'no refill before midnight');

	$left = $to_midnight->() + 0.5;
	usleep(int($left * 1_000_000)) if $left > 0;
	is(sql($node, $db, "SELECT (now() AT TIME ZONE 'UTC')::date"), $day2, "the server's UTC day is now $day2");
	is(charge($km_key), 'valid 1.0', "$day2: the quota is 2 again: a charge leaves 1.0");
	is(charge($km_key), 'valid 0.0', "$day2: a second charge leaves 0.0");
	is(charge($km_key), 'insufficient_credits 0.0', "$day2: the third gets insufficient_credits");
	is(sql($node, $db, "SELECT count(*) || ' ' || string_agg(detail->>'period', ',')
		FROM apikeys.audit WHERE key_id = '$km_id' AND event = 'quota_refilled'"),
		"1 $day2", "one quota_refilled event, for the period starting $day2");
	is(balance('midnight'), '96.0', 'the balance paid for the 4 charges: 96.0');
	flush_usage($node, $db);
	is(spent_of('midnight', 1), "$km_id $day1 2.0, $km_id $day2 2.0",
		'apikeys.credit_usage splits the spend at 00:00 UTC: 2 on each day');
	check_no_crash($node, 0, 'no process crashed');
}

$node->stop;
done_testing();
