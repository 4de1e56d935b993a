# 010_midnight.pl -- the UTC day rolls over under a full counter table, for
# real: the server runs under libfaketime with its clock set 15 seconds
# before the next 00:00 UTC.
#
# Usage is counted per key and UTC day, and a flushed counter entry may stay
# in shared memory until its day is over or its room is needed: a table
# full of today's flushed entries must not make validations wait for the
# day to end, and counts made just before midnight must land on the day
# they were made.  With apikeys.max_tracked_keys = 100:
#
#   - before midnight: 100 distinct keys fill the table; flush_usage()
#     writes them, and they stay as today's flushed entries; then 50 more
#     distinct keys, which must not wait for the day to end; the first 50
#     keys again; and, in the last seconds of the day, 20 new keys whose
#     counts may still be in shared memory when the day ends
#   - after midnight: the first 100 keys again (new key-days, the table
#     full of yesterday's), those 20 again and 90 new ones
#   - after flush_usage(): apikeys.usage holds exactly the calls and
#     rejected of every (key, day), split at 00:00 UTC; apikey_usage()
#     agrees; no validation call took longer than flush_interval + 3 s;
#     no process crashed
#
# Each call validates a range of keys in one statement and reports the UTC
# day of the statement's start and of its end: a call that would straddle
# midnight is detected rather than guessed.  About 25 s.  Skipped only when
# libfaketime (Debian package faketime, installed by test/setup.sh) is
# missing.  libfaketime shifts the clock of client backends; background
# workers, which the postmaster starts from a signal handler, keep the real
# clock.  That is harmless here (a count's day is its statement's, and the
# worker only writes it); 015_credits.pl, where the worker itself must see
# midnight, uses a clock shim instead.
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

my ($libfaketime) = grep { -e $_ } (
	'/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1',
	glob('/usr/lib/*/faketime/libfaketime.so.1'));
plan skip_all => 'libfaketime is not installed (Debian package faketime)'
  unless $libfaketime;

my $max_tracked = 100;
my $flush_s = 1;
my $wait_limit_s = $flush_s + 3;    # the longest a validation call may take
my $lead_s = 15;                    # the server starts this long before midnight
my $nkeys = 260;

my $node = PostgreSQL::Test::Cluster->new('midnight');
$node->init;
$node->append_conf('postgresql.conf', join("\n",
	"shared_preload_libraries = 'apikeys'",
	"max_worker_processes = 16",
	"log_statement = 'none'",
	'restart_after_crash = on',
	"apikeys.max_tracked_keys = $max_tracked",
	"apikeys.flush_interval = '${flush_s}s'"));

# The server's clock runs FAKETIME seconds ahead of the real one, in the
# postmaster and every process it forks.  Only the server is faked.
my $now = time;
my $midnight = (floor(($now + $lead_s) / 86400) + 1) * 86400;
my $offset = int($midnight - $lead_s - $now);
{
	local $ENV{LD_PRELOAD} = $libfaketime;
	local $ENV{FAKETIME} = "+$offset";
	local $ENV{FAKETIME_DONT_FAKE_MONOTONIC} = '1';
	$node->start;
}
my $db = 'postgres';
my $midnight_sql = "to_timestamp($midnight)";

# seconds from the server's clock to midnight (negative after it)
sub to_midnight
{
	return sql($node, $db, "SELECT round(extract(epoch FROM $midnight_sql - clock_timestamp())::numeric, 3)");
}

my ($day1, $day2) = split / /, sql($node, $db,
	"SELECT (($midnight_sql AT TIME ZONE 'UTC')::date - 1) || ' ' || ($midnight_sql AT TIME ZONE 'UTC')::date");
my $left = to_midnight();
note("server clock: " . sql($node, $db, "SELECT clock_timestamp() AT TIME ZONE 'UTC'")
	  . " UTC (real: " . gmtime($now) . "), ${left}s to midnight");
ok($left > 0 && $left <= $lead_s + 5,
	"the server's clock (libfaketime) is just before 00:00 UTC of $day2 (${left}s)");
is(sql($node, $db, "SELECT (now() AT TIME ZONE 'UTC')::date"), $day1, "the server's UTC day is $day1");

create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'the database gets its worker');
my @keys = create_keys($node, $db, 'midnight', $nkeys);
my @ids = (undef, map { $_->[0] } @keys);
sql($node, $db, 'SELECT count(apikeys.apikey_revoke(id)) FROM public.test_keys WHERE n % 10 = 0');
sub revoked { return $_[0] % 10 == 0; }

my %expect;     # "id day" => [calls, rejected]
my %unknown;    # n => 1: keys of a call that hung (what it counted is unknown)
my $worst = 0;

# validate(FROM, TO, LABEL) -- validates keys FROM..TO once each, in one
# statement; checks it took less than flush_interval + 3 s, and records
# the calls under the UTC day the statement ran in.
sub validate
{
	my ($from, $to, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $n = $to - $from + 1;
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql($db, qq{
		SELECT to_char(statement_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD')
		       || ' ' || count(*) || ' ' || count(*) FILTER (WHERE (v).valid)
		       || ' ' || to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD')
		  FROM (SELECT apikeys.apikey_validate(key) AS v FROM public.test_keys
		         WHERE n BETWEEN $from AND $to) s},
		timeout => 2 * $wait_limit_s, timed_out => \my $timed_out, on_error_die => 0);
	my $took = time - $t0;
	$worst = $took if $took > $worst;
	if ($timed_out || $ret != 0)
	{
		fail(sprintf('%s: keys %d-%d %s after %.2fs', $label, $from, $to,
				$timed_out ? 'still waiting' : 'failed', $took));
		diag($err) if $err;
		$unknown{$_} = 1 for $from .. $to;
		return;
	}
	my ($start_day, $count, $valid, $end_day) = split / /, $out;
	my $want_valid = grep { !revoked($_) } $from .. $to;
	ok($count == $n && $valid == $want_valid && $start_day eq $end_day && $took < $wait_limit_s,
		sprintf('%s: keys %d-%d validated on %s in %.2fs (%d valid)', $label, $from, $to,
			$start_day, $took, $valid))
	  or diag("got '$out': $n calls and $want_valid valid expected, one UTC day, less than ${wait_limit_s}s");
	if ($start_day ne $end_day)
	{
		$unknown{$_} = 1 for $from .. $to;
		return;
	}
	for my $k ($from .. $to)
	{
		my $e = $expect{"$ids[$k] $start_day"} //= [ 0, 0 ];
		$e->[ revoked($k) ? 1 : 0 ]++;
	}
	return $start_day;
}

# sleep_until(SECONDS) -- waits until the server's clock is SECONDS before
# midnight (negative: after it).
sub sleep_until
{
	my ($before) = @_;
	my $left = to_midnight() - $before;
	usleep(int($left * 1_000_000)) if $left > 0;
	return;
}

# ---------------------------------------------------------------------------
# 1. The last seconds of the day
# ---------------------------------------------------------------------------
is(validate(1, 100, 'before midnight, a full table'), $day1, "... on $day1");
is(sql($node, $db, 'SELECT count(*) FROM apikeys.usage'), '0', 'nothing flushed yet');
flush_usage($node, $db, "flush_usage(): the table holds $max_tracked flushed keys of $day1");
validate(101, 150, 'before midnight, 50 new keys');
validate(1, 50, 'before midnight, known keys again');
$left = to_midnight();
if ($left > 4)
{
	sleep_until(4);
	validate(151, 170, 'four seconds before midnight, 20 new keys');
}
else
{
	fail("four seconds before midnight, 20 new keys: not run, only ${left}s were left (a slow call or set-up)");
}
$left = to_midnight();
ok($left > 0, "the day $day1 part ended before midnight (${left}s left)");

# ---------------------------------------------------------------------------
# 2. A new day
# ---------------------------------------------------------------------------
sleep_until(-1);
is(sql($node, $db, "SELECT (now() AT TIME ZONE 'UTC')::date"), $day2, "the server's UTC day is now $day2");
is(validate(1, 100, 'after midnight, the first 100 keys again'), $day2, "... on $day2");
validate(151, 170, 'after midnight, the last-second keys again');
validate(171, 260, 'after midnight, 90 new keys');

# ---------------------------------------------------------------------------
# 3. Exact counts per key and day
# ---------------------------------------------------------------------------
flush_usage($node, $db);
my %got;
for my $line (split /\n/, sql($node, $db, 'SELECT key_id, day, calls, rejected FROM apikeys.usage'))
{
	my ($id, $day, $c, $r) = split /\|/, $line;
	$got{"$id $day"} = [ $c + 0, $r + 0 ];
}
my %n_of = map { $ids[$_] => $_ } 1 .. $nkeys;
my @unknown_ids = grep { $unknown{ $n_of{ (split / /, $_)[0] } } } keys %{ { %got, %expect } };
delete @got{@unknown_ids};
delete @expect{@unknown_ids};
note(scalar(keys %unknown) . ' keys left out: a call of theirs hung') if %unknown;
my @wrong = map { sprintf('key %d on %s: usage %s, sent %s', $n_of{ (split / /, $_)[0] }, (split / /, $_)[1],
		join('/', @{ $got{$_} // [ 'none', 'none' ] }), join('/', @{ $expect{$_} // [ 'none', 'none' ] })) }
  grep { !$got{$_} || !$expect{$_} || $got{$_}[0] != $expect{$_}[0] || $got{$_}[1] != $expect{$_}[1] }
  sort keys %{ { %got, %expect } };
my %per_day;
for my $k (keys %expect)
{
	my $day = (split / /, $k)[1];
	$per_day{$day}[$_] += $expect{$k}[$_] for 0, 1;
}
ok(!@wrong && !%unknown,
	'apikeys.usage holds exactly the calls and rejected of every key on each UTC day: '
	  . join('; ', map { "$_: $per_day{$_}[0] calls, $per_day{$_}[1] rejected" } sort keys %per_day))
  or diag(scalar(@wrong) . " (key, day) rows wrong:\n" . join("\n", @wrong[ 0 .. ($#wrong < 19 ? $#wrong : 19) ]));
is(sql($node, $db, "SELECT string_agg(day || ' ' || c || ' ' || r, ', ' ORDER BY day)
	FROM (SELECT day, sum(calls) AS c, sum(rejected) AS r FROM apikeys.apikey_usage('midnight', 2) GROUP BY day) s"),
	join(', ', map { "$_ $per_day{$_}[0] $per_day{$_}[1]" } sort keys %per_day),
	'apikey_usage() agrees, day by day');
ok($worst < $wait_limit_s,
	sprintf('the longest validation call took %.2fs: less than flush_interval + 3 s', $worst));

check_no_crash($node);
$node->stop;
done_testing();
