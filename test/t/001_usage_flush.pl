# 001_usage_flush.pl -- validations are counted in shared memory and the
# worker flushes them, exactly, to apikeys.usage and last_used_at.
#
#   - counts reach apikeys.usage within a few flush intervals with nobody
#     calling flush_usage()
#   - 16 concurrent pgbench clients, valid and rejected outcomes mixed over
#     several keys and two owners, flushing while they run: apikeys.usage,
#     apikey_usage and apikey_analytics agree exactly with what was sent;
#     malformed and unknown keys are not counted
#   - validations inside BEGIN READ ONLY are counted
#   - a key created and validated in a rolled-back transaction does not
#     poison later flushes; validations of an existing key in a rolled-back
#     transaction are counted
#   - last_used_at is set by a flush (valid calls only)
#   - shared memory per tracked key is at most 128 bytes
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

# A short interval: many flushes happen while the load below runs.  (Not
# changed by a reload: see 004_worker_lifecycle.pl for what a reload does.)
my $flush_interval_s = 0.3;
my $node = new_node('usage_flush', "apikeys.flush_interval = '300ms'");
my $db = 'postgres';
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'the database gets its worker');

# ---------------------------------------------------------------------------
# 1. Counts flow without flush_usage(): within a few flush intervals.
# ---------------------------------------------------------------------------
my ($a_id, $a_key) = create_key($node, $db, 'erin', 'auto');
is(validate_n($node, $db, $a_key, 3), 'valid', 'three valid calls');
my $t0 = time;
my $took = wait_until($node, $db,
	"SELECT coalesce(sum(calls), 0) || '/' || coalesce(sum(rejected), 0) FROM apikeys.usage WHERE key_id = '$a_id'",
	'3/0', 10 * $flush_interval_s);
ok(defined $took, 'counts reach apikeys.usage without flush_usage()');
ok(defined $took && $took <= 4 * $flush_interval_s,
	sprintf('... within 4 flush intervals (took %.2fs, interval %.1fs)', $took // -1, $flush_interval_s));
is(sql($node, $db, "SELECT last_used_at IS NOT NULL FROM apikeys.apikey_list('erin')"),
	't', 'the automatic flush also set last_used_at');

# ---------------------------------------------------------------------------
# 2. Exact totals under concurrent load, valid and rejected mixed.
# ---------------------------------------------------------------------------
my %k;
($k{ka}{id}, $k{ka}{key}) = create_key($node, $db, 'alice', 'plain a');
($k{kb}{id}, $k{kb}{key}) = create_key($node, $db, 'alice', 'plain b');
($k{kr}{id}, $k{kr}{key}) = create_key($node, $db, 'alice', 'revoked');
($k{ks}{id}, $k{ks}{key}) = create_key($node, $db, 'alice', 'scoped', "scope => 'verify'");
($k{kip}{id}, $k{kip}{key}) =
  create_key($node, $db, 'alice', 'ip', "ip_restrictions => '{10.1.0.0/16}'");
($k{kx}{id}, $k{kx}{key}) = create_key($node, $db, 'alice', 'expired', 'expires_in_days => 1');
($k{kbob}{id}, $k{kbob}{key}) = create_key($node, $db, 'bob', 'bob key');
sql($node, $db, "SELECT apikeys.apikey_revoke('$k{kr}{id}')");
sql($node, $db,
	"UPDATE apikeys.keys SET expires_at = now() - interval '1 minute' WHERE id = '$k{kx}{id}'");

# a well-formed key that does not exist: minted in a rolled-back transaction
my $not_found = sql($node, $db, q{
	BEGIN;
	SELECT key FROM apikeys.apikey_create(owner => 'nobody', name => 'rolled back');
	ROLLBACK;});
like($not_found, qr/^ak_[0-9A-Za-z]{38}$/, 'a well-formed key that does not exist');
is(validate_n($node, $db, $not_found, 1), 'not_found', '... validates as not_found');
is(validate_n($node, $db, 'ak_notakey', 1), 'malformed', 'a malformed key');

my $script = <<'EOS';
SELECT apikeys.apikey_validate(:ka);
SELECT apikeys.apikey_validate(:kb);
SELECT apikeys.apikey_validate(:kb, :lists_write);
SELECT apikeys.apikey_validate(:kr);
SELECT apikeys.apikey_validate(:ks, :lists_read);
SELECT apikeys.apikey_validate(:ks, :verify_read);
SELECT apikeys.apikey_validate(:kip, NULL, '192.0.2.1');
SELECT apikeys.apikey_validate(:kip, NULL, '10.1.2.3');
SELECT apikeys.apikey_validate(:kx);
SELECT apikeys.apikey_validate(:kbob);
SELECT apikeys.apikey_validate(:kmal);
SELECT apikeys.apikey_validate(:knf);
EOS
# what one transaction of the script adds: [calls, rejected]
my %per_txn = (
	ka => [ 1, 0 ], kb => [ 2, 0 ], kr => [ 0, 1 ], ks => [ 1, 1 ],
	kip => [ 1, 1 ], kx => [ 0, 1 ], kbob => [ 1, 0 ]);

# check the codes the script will produce, once, before the load
is(sql($node, $db, qq{
	SELECT string_agg(code, ',') FROM (VALUES
	 ((apikeys.apikey_validate('$k{kr}{key}')).code),
	 ((apikeys.apikey_validate('$k{ks}{key}', 'lists:read')).code),
	 ((apikeys.apikey_validate('$k{kip}{key}', NULL, '192.0.2.1')).code),
	 ((apikeys.apikey_validate('$k{kx}{key}')).code)) AS v(code)}),
	'revoked,insufficient_scope,ip_not_allowed,expired',
	'the rejected outcomes of the script');
# ... which counted one rejected call each
my %extra = (kr => [ 0, 1 ], ks => [ 0, 1 ], kip => [ 0, 1 ], kx => [ 0, 1 ]);

# with a short interval, many flushes subtract what they wrote while 16
# clients keep adding
my ($clients, $txns) = (16, 100);
# (permissions go in variables: pgbench would take ':write' in a literal
# for a variable reference)
my %vars = (kmal => 'ak_notakey', knf => $not_found,
	lists_write => 'lists:write', lists_read => 'lists:read', verify_read => 'verify:read');
$vars{$_} = $k{$_}{key} for keys %k;
$t0 = time;
run_pgbench($node, $db, $clients, $txns, $script, \%vars);
note(sprintf('pgbench: %d validations in %.2fs',
	$clients * $txns * 12, time - $t0));
flush_usage($node, $db);

my $n = $clients * $txns;
my %expect;    # key id => [calls, rejected]
for my $name (keys %per_txn)
{
	my $e = $extra{$name} // [ 0, 0 ];
	$expect{ $k{$name}{id} } =
	  [ $per_txn{$name}[0] * $n + $e->[0], $per_txn{$name}[1] * $n + $e->[1] ];
}
$expect{$a_id} = [ 3, 0 ];
is_deeply(usage_of($node, $db), \%expect,
	"apikeys.usage holds exactly what $n script runs sent, per key (malformed and not_found not counted)");

# apikey_usage, per owner (2 days: the run may straddle UTC midnight)
for my $owner ('alice', 'bob', 'erin')
{
	my %got;
	for my $line (split /\n/, sql($node, $db,
			"SELECT key_id, calls, rejected FROM apikeys.apikey_usage('$owner', 2)"))
	{
		my ($id, $c, $r) = split /\|/, $line;
		$got{$id}[0] += $c;
		$got{$id}[1] += $r;
	}
	my %want = map { $_ => $expect{$_} } grep {
		sql($node, $db, "SELECT owner FROM apikeys.keys WHERE id = '$_'") eq $owner
		  && ($expect{$_}[0] || $expect{$_}[1])
	} keys %expect;
	is_deeply(\%got, \%want, "apikey_usage('$owner') matches exactly");
}

# apikey_analytics, per owner
my $json = JSON::PP->new;
my $an = $json->decode(sql($node, $db, "SELECT apikeys.apikey_analytics('alice', 2)"));
my $alice_calls = 0;
$alice_calls += $expect{ $k{$_}{id} }[0] for qw(ka kb kr ks kip kx);
is($an->{totalCalls}, $alice_calls, "apikey_analytics('alice') totalCalls is $alice_calls");
my $daily = 0;
$daily += $_->{count} for @{ $an->{dailyUsage} };
is($daily, $alice_calls, '... and its dailyUsage adds up to it');
is(scalar @{ $an->{dailyUsage} }, 2, '... with one entry per day of the window');
my %an_keys = map { $_->{keyId} => $_ } @{ $an->{keys} };
is_deeply([ sort keys %an_keys ], [ sort map { $k{$_}{id} } qw(ka kb kr ks kip kx) ],
	'... lists every key of alice, the revoked one included');
for my $name (qw(ka kb kr ks kip kx))
{
	my $entry = $an_keys{ $k{$name}{id} };
	my $sum = 0;
	$sum += $_->{count} for @{ $entry->{dailyUsage} };
	is($entry->{totalCalls} . '/' . $sum,
		"$expect{$k{$name}{id}}[0]/$expect{$k{$name}{id}}[0]",
		"... key $name: totalCalls and its dailyUsage are $expect{$k{$name}{id}}[0]");
}
ok($an_keys{ $k{kr}{id} }{isRevoked}, '... the revoked key says isRevoked');
$an = $json->decode(sql($node, $db, "SELECT apikeys.apikey_analytics('bob', 2)"));
is($an->{totalCalls}, $n, "apikey_analytics('bob') totalCalls is $n");

# a second flush with nothing new changes nothing
flush_usage($node, $db, 'a flush with nothing new');
is_deeply(usage_of($node, $db), \%expect, '... changes nothing');

# ---------------------------------------------------------------------------
# 3. BEGIN READ ONLY
# ---------------------------------------------------------------------------
my ($ro_id, $ro_key) = create_key($node, $db, 'carol', 'read only');
is(sql($node, $db, qq{
	BEGIN READ ONLY;
	SELECT string_agg(DISTINCT (v).code, ',') || ':' || count(*)
	  FROM (SELECT apikeys.apikey_validate('$ro_key') AS v FROM generate_series(1, 5)) s;
	SELECT apikeys.apikey_validate('$ro_key', 'lists:read');
	COMMIT;}) =~ s/\n.*//sr, 'valid:5', 'validation works in a READ ONLY transaction');
flush_usage($node, $db);
is_deeply(usage_of($node, $db)->{$ro_id}, [ 6, 0 ],
	'the 6 validations made in BEGIN READ ONLY are counted');

# ---------------------------------------------------------------------------
# 4. Rolled-back transactions
# ---------------------------------------------------------------------------
my ($c_id, $c_key) = create_key($node, $db, 'carol', 'existing');
my $ghost = sql($node, $db, q{
	BEGIN;
	CREATE TEMP TABLE ghost AS
	  SELECT id, key FROM apikeys.apikey_create(owner => 'carol', name => 'ghost');
	SELECT g.id || ':' || string_agg(DISTINCT (s.v).code, ',') || ':' || count(*)
	  FROM ghost g,
	       LATERAL (SELECT apikeys.apikey_validate(g.key) AS v
	                  FROM generate_series(1, 5)) s
	 GROUP BY g.id;
	ROLLBACK;});
my ($ghost_id, $ghost_codes, $ghost_n) = split /:/, $ghost;
is("$ghost_codes:$ghost_n", 'valid:5',
	'a key created in a transaction validates inside it (5 calls)');
is(validate_n($node, $db, $c_key, 7), 'valid', 'then 7 calls of an existing key');
flush_usage($node, $db, 'flush after the rolled-back key');
my $u = usage_of($node, $db);
is_deeply($u->{$c_id}, [ 7, 0 ], '... the existing key has exactly its 7 calls');
ok(!exists $u->{$ghost_id}, '... the rolled-back key has no usage row');

is(sql($node, $db, qq{
	BEGIN;
	SELECT count(*) FROM (SELECT apikeys.apikey_validate('$c_key') FROM generate_series(1, 4)) s;
	ROLLBACK;}), '4', '4 calls of the existing key in a transaction that rolls back');
is(validate_n($node, $db, $c_key, 11), 'valid', '11 more calls');
is(validate_n($node, $db, $k{ka}{key}, 3), 'valid', '3 more calls of another key');
flush_usage($node, $db, 'flush again');
$u = usage_of($node, $db);
is_deeply($u->{$c_id}, [ 22, 0 ],
	'... 7 + 4 (rolled back, but the calls happened) + 11 = 22 calls');
is_deeply($u->{ $k{ka}{id} }, [ $expect{ $k{ka}{id} }[0] + 3, 0 ], '... the other key gained exactly 3');
ok(!exists $u->{$ghost_id}, '... still no row for the rolled-back key');

# a key validated in the transaction that creates it, which commits after
# several flushes have found no such key: its counts are kept and flushed
my $late = sql($node, $db, q{
	BEGIN;
	CREATE TEMP TABLE late AS
	  SELECT id, key FROM apikeys.apikey_create(owner => 'carol', name => 'late');
	SELECT count(*) FROM late l, LATERAL (SELECT apikeys.apikey_validate(l.key)
	                                        FROM generate_series(1, 5)) s;
	SELECT pg_sleep(1.5);
	SELECT id FROM late;
	COMMIT;});
my ($late_n, undef, $late_id) = split /\n/, $late;
is($late_n, '5', '5 calls of a key in the transaction that creates it, committed 1.5 s later');
flush_usage($node, $db, 'flush after it commits');
is_deeply(usage_of($node, $db)->{$late_id}, [ 5, 0 ],
	'... its 5 calls are flushed once its creation commits');

# and counts keep flowing on their own, without flush_usage()
is(validate_n($node, $db, $c_key, 2), 'valid', '2 more calls');
$took = wait_until($node, $db,
	"SELECT sum(calls) FROM apikeys.usage WHERE key_id = '$c_id'", '24', 10 * $flush_interval_s);
ok(defined $took, sprintf('... reach apikeys.usage on their own (%.2fs)', $took // -1));

# ---------------------------------------------------------------------------
# 5. last_used_at
# ---------------------------------------------------------------------------
my ($l_id, $l_key) = create_key($node, $db, 'dave', 'last used');
is(sql($node, $db, "SELECT last_used_at IS NULL FROM apikeys.apikey_list('dave')"),
	't', 'a new key has no last_used_at');
my $before = sql($node, $db, 'SELECT clock_timestamp()');
is(validate_n($node, $db, $l_key, 1), 'valid', 'one valid call');
my $after = sql($node, $db, 'SELECT clock_timestamp()');
flush_usage($node, $db);
is(sql($node, $db,
		"SELECT last_used_at BETWEEN '$before' AND '$after' FROM apikeys.apikey_list('dave')"),
	't', 'after a flush, last_used_at in apikey_list is the time of that call');
is(sql($node, $db, "SELECT last_used_at IS NULL FROM apikeys.keys WHERE id = '$k{kr}{id}'"),
	't', 'a key with only rejected calls has no last_used_at');

# last_used_at is kept to the minute: another call within it rewrites no row
my $first_used = sql($node, $db, "SELECT last_used_at FROM apikeys.keys WHERE id = '$l_id'");
my $row_version = sql($node, $db, "SELECT xmin FROM apikeys.keys WHERE id = '$l_id'");
is(validate_n($node, $db, $l_key, 3), 'valid', 'three more valid calls within the minute');
flush_usage($node, $db);
is(sql($node, $db, "SELECT last_used_at = '$first_used' AND xmin = '$row_version'"
		. " FROM apikeys.keys WHERE id = '$l_id'"),
	't', 'last_used_at and the key row are untouched by a flush within the minute');
is(sql($node, $db, "SELECT sum(calls) FROM apikeys.usage WHERE key_id = '$l_id'"),
	'4', 'while the calls themselves are all counted');
# a minute later (simulated by moving last_used_at back) the flush moves it
sql($node, $db, "UPDATE apikeys.keys SET last_used_at = last_used_at - interval '2 minutes' WHERE id = '$l_id'");
$before = sql($node, $db, 'SELECT clock_timestamp()');
is(validate_n($node, $db, $l_key, 1), 'valid', 'one more call');
$after = sql($node, $db, 'SELECT clock_timestamp()');
flush_usage($node, $db);
is(sql($node, $db,
		"SELECT last_used_at BETWEEN '$before' AND '$after' FROM apikeys.keys WHERE id = '$l_id'"),
	't', 'a last_used_at more than a minute behind is moved to the latest call');

# ---------------------------------------------------------------------------
# 6. Shared memory per tracked key
# ---------------------------------------------------------------------------
my $max_keys = sql($node, $db, 'SHOW apikeys.max_tracked_keys');
my $named = sql($node, $db,
	"SELECT allocated_size FROM pg_shmem_allocations WHERE name = 'apikeys usage counters'");
ok($named > 0, 'pg_shmem_allocations lists "apikeys usage counters"');
my $per_key_named = $named / $max_keys;
note(sprintf('"apikeys usage counters": %d bytes / %d keys = %.1f bytes per key',
	$named, $max_keys, $per_key_named));
ok($per_key_named <= 128,
	sprintf('"apikeys usage counters" / max_tracked_keys = %.1f bytes <= 128', $per_key_named));

# The named allocation may not hold the hash elements (dynahash allocates
# them separately); the marginal cost is what one more tracked key really
# costs: total allocated shared memory at two sizes.
my $total_q = 'SELECT sum(allocated_size) FROM pg_shmem_allocations WHERE name IS NOT NULL';
my $total_small = sql($node, $db, $total_q);
my $bigger = $max_keys + 100000;
$node->append_conf('postgresql.conf', "apikeys.max_tracked_keys = $bigger");
$node->restart;
is(sql($node, $db, 'SHOW apikeys.max_tracked_keys'), $bigger, "restarted with max_tracked_keys = $bigger");
my $total_big = sql($node, $db, $total_q);
my $marginal = ($total_big - $total_small) / 100000;
note(sprintf('total allocated shared memory: %d bytes at %d keys, %d at %d keys: %.1f bytes per key',
	$total_small, $max_keys, $total_big, $bigger, $marginal));
ok($marginal > 0 && $marginal <= 128,
	sprintf('shared memory per tracked key (marginal) = %.1f bytes <= 128', $marginal));

# nothing counted was lost across that clean restart
flush_usage($node, $db, 'flush after the restart');
is(sql($node, $db, "SELECT sum(calls) FROM apikeys.usage WHERE key_id = '$c_id'"), '24',
	'counts are unchanged by the restart');

check_no_crash($node);
$node->stop;
done_testing();
