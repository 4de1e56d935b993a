# 003_usage_full_table.pl -- a full counter table never drops a count.
#
# apikeys.max_tracked_keys = 100 (the minimum) and flush_interval = 1 hour:
# 320 distinct keys are validated from two concurrent sessions in one
# interval, so the table fills three times over and only the pressure path
# (a validating backend waking the worker and waiting for room) can make
# room.  Every key must end with exactly its count, valid and rejected.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = new_node('usage_full_table',
	'apikeys.max_tracked_keys = 100',
	"apikeys.flush_interval = '1h'");
my $db = 'postgres';
is(sql($node, $db, 'SHOW apikeys.max_tracked_keys'), '100', 'max_tracked_keys is 100');
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'the database gets its worker');

my $nkeys = 320;
my @keys = create_keys($node, $db, 'fran', $nkeys);
is(scalar @keys, $nkeys, "$nkeys keys");
# every 10th key is revoked: its calls count as rejected
sql($node, $db,
	'SELECT apikeys.apikey_revoke(id) FROM public.test_keys WHERE n % 10 = 0');
my $nrevoked = $nkeys / 10;
is(usage_rows($node, $db), 0, 'no usage yet');

# Session 1 validates every key once, in order; session 2 every key twice,
# in reverse order: 3 calls per key, 960 counters-worth of key-days.
my $t0 = time;
my $s1 = start_psql($node, $db, q{
	SELECT count(*) || ':' || count(*) FILTER (WHERE (v).valid)
	  FROM (SELECT apikeys.apikey_validate(key) AS v FROM public.test_keys ORDER BY n) s});
my $s2 = start_psql($node, $db, q{
	SELECT count(*) || ':' || count(*) FILTER (WHERE (v).valid)
	  FROM (SELECT apikeys.apikey_validate(t.key) AS v
	          FROM public.test_keys t, generate_series(1, 2) g
	         ORDER BY t.n DESC, g) s});
my ($ok1, $out1, $err1) = finish_psql($s1);
my ($ok2, $out2, $err2) = finish_psql($s2);
my $took = time - $t0;
my $valid = $nkeys - $nrevoked;
is($out1, "$nkeys:$valid", "session 1: $nkeys validations, $valid valid") or diag($err1);
is($out2, 2 * $nkeys . ':' . 2 * $valid, 'session 2: ' . 2 * $nkeys . ' validations')
  or diag($err2);
ok($took < 30, sprintf('both sessions finished in bounded time (%.2fs)', $took));

# With a 1 h interval only the pressure path can have flushed: at most 100
# key-days (3 calls each) can still be in shared memory.
my $flushed_early = sql($node, $db, 'SELECT coalesce(sum(calls + rejected), 0) FROM apikeys.usage');
note("flushed by the pressure path before flush_usage(): $flushed_early of " . 3 * $nkeys);
ok($flushed_early >= 3 * $nkeys - 3 * 100,
	"the full table made the worker flush at least " . (3 * $nkeys - 300) . " calls ($flushed_early)");

flush_usage($node, $db);
my $u = usage_of($node, $db);
my %expect;
for my $i (1 .. $nkeys)
{
	my $id = $keys[ $i - 1 ][0];
	$expect{$id} = $i % 10 == 0 ? [ 0, 3 ] : [ 3, 0 ];
}
is(scalar keys %$u, $nkeys, "all $nkeys keys have usage");
my @wrong = map { "$_: " . join('/', @{ $u->{$_} // [ 'none', 'none' ] }) }
  grep { !$u->{$_} || $u->{$_}[0] != $expect{$_}[0] || $u->{$_}[1] != $expect{$_}[1] }
  sort keys %expect;
ok(!@wrong, 'every key has exactly its 3 calls (valid, or rejected if revoked)')
  or diag(scalar(@wrong) . " keys wrong:\n" . join("\n", @wrong[ 0 .. ($#wrong < 19 ? $#wrong : 19) ]));
is(sql($node, $db, q{SELECT sum(calls) || '/' || sum(rejected) FROM apikeys.usage}),
	3 * $valid . '/' . 3 * $nrevoked, 'totals: ' . 3 * $valid . ' valid, ' . 3 * $nrevoked . ' rejected');

# and once more, with more concurrent sessions than the table has room for
# per round: four sessions, each validating all keys once
my @s = map {
	start_psql($node, $db, qq{
	SELECT count(*) FROM (SELECT apikeys.apikey_validate(key) AS v
	                        FROM public.test_keys ORDER BY (n * $_) % $nkeys) s})
} 1 .. 4;
my @res = map { [ finish_psql($_) ] } @s;
is(join(',', map { $_->[1] } @res), join(',', ($nkeys) x 4), 'four more sessions of 320 validations each')
  or diag(join("\n", map { $_->[2] } @res));
flush_usage($node, $db);
is(sql($node, $db, q{SELECT sum(calls) || '/' || sum(rejected) FROM apikeys.usage}),
	7 * $valid . '/' . 7 * $nrevoked, 'totals: ' . 7 * $valid . ' valid, ' . 7 * $nrevoked . ' rejected');
is(sql($node, $db, q{SELECT count(*) FROM (SELECT t.id FROM public.test_keys t
	LEFT JOIN apikeys.usage u ON u.key_id = t.id GROUP BY t.id
	HAVING coalesce(sum(u.calls + u.rejected), 0) <> 7) s}), '0', '... 7 per key');

check_no_crash($node);
$node->stop;
done_testing();
