# 005_expiry_retention.pl -- the worker expires keys (with audit and
# NOTIFY) and deletes old usage rows.
#
# Expiry, with apikeys.expiry_interval = 1 s:
#   - a key moved past expires_at is marked expired (expired_at), gets
#     exactly one 'expired' audit event and one NOTIFY apikeys_expired with
#     its id as payload, received by a LISTEN session
#   - a key that reaches its expires_at on its own is expired the same way
#   - a revoked key past expires_at is not marked expired
#   - validation answers 'expired' before and after the worker marks it
# Retention:
#   - at worker start, usage rows older than usage_retention_days are
#     deleted, and only those (boundary day included / excluded exactly)
#   - usage_retention_days below 90 is refused (ALTER SYSTEM, SET, and in
#     postgresql.conf, where it is ignored with a warning)
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = new_node('expiry_retention',
	'apikeys.expiry_interval = 1',
	'apikeys.usage_retention_days = 400');
my $db = 'postgres';
create_extension($node, $db);
ok(defined wait_for_worker($node, $db, 10), 'the database gets its worker');

# ---------------------------------------------------------------------------
# 1. Expiry
# ---------------------------------------------------------------------------
my ($e_id, $e_key) = create_key($node, $db, 'gina', 'to expire', 'expires_in_days => 1');
my ($rv_id, $rv_key) = create_key($node, $db, 'gina', 'revoked, then past expiry', 'expires_in_days => 1');
my ($f_id, $f_key) = create_key($node, $db, 'gina', 'future', 'expires_in_days => 1');
my ($n_id, $n_key) = create_key($node, $db, 'gina', 'never expires');
my ($s_id, $s_key) = create_key($node, $db, 'gina', 'expires by itself', 'expires_in_days => 1');
sql($node, $db, "SELECT apikeys.apikey_revoke('$rv_id')");

my $listener = $node->background_psql($db);
$listener->query_safe('LISTEN apikeys_expired');
my $heard = '';
# polls the LISTEN session (psql prints notifications after each query)
sub listen_for
{
	my ($id, $seconds) = @_;
	my $t0 = time;
	my $re = qr/Asynchronous notification "apikeys_expired" with payload "$id" received/;
	while (1)
	{
		$heard .= $listener->query('SELECT 1') . "\n";
		return time - $t0 if $heard =~ $re;
		return undef if time - $t0 > $seconds;
		usleep(100_000);
	}
}

is(validate_n($node, $db, $e_key, 1), 'valid', 'the key is valid before');
is(sql($node, $db, qq{
	BEGIN;
	UPDATE apikeys.keys SET expires_at = now() - interval '1 second'
	 WHERE id IN ('$e_id', '$rv_id');
	SELECT (apikeys.apikey_validate('$e_key')).code;
	SELECT status FROM apikeys.apikey_list('gina') WHERE id = '$e_id';
	COMMIT;}), "expired\nexpired",
	"moved past expires_at, it validates 'expired' and lists 'expired' before the worker could see it");
my $t0 = time;
my $took = listen_for($e_id, 6);
ok(defined $took, sprintf('a LISTEN session receives apikeys_expired with the key id (%.2fs)', time - $t0));
ok(defined $took && time - $t0 <= 4, '... within a few expiry intervals (1 s)');

is(sql($node, $db, "SELECT expired_at IS NOT NULL FROM apikeys.keys WHERE id = '$e_id'"),
	't', 'apikeys.keys.expired_at is set');
is(sql($node, $db, "SELECT count(*) || ':' || min(owner) FROM apikeys.audit WHERE key_id = '$e_id' AND event = 'expired'"),
	'1:gina', 'one audit event "expired", with the owner');
is(validate_n($node, $db, $e_key, 1), 'expired', "validation says 'expired' after the worker marked it");

# the pass that expired e saw rv too (same transaction)
is(sql($node, $db, "SELECT expired_at IS NULL FROM apikeys.keys WHERE id = '$rv_id'"),
	't', 'the revoked key past expiry is not marked expired');
is(sql($node, $db, "SELECT count(*) FROM apikeys.audit WHERE key_id = '$rv_id' AND event = 'expired'"),
	'0', '... and has no expired event');
is(validate_n($node, $db, $rv_key, 1), 'revoked', "... it validates 'revoked'");
is(sql($node, $db, "SELECT status FROM apikeys.apikey_list('gina') WHERE id = '$rv_id'"),
	'revoked', "... and lists 'revoked'");

# a key that reaches expires_at by itself
sql($node, $db, "UPDATE apikeys.keys SET expires_at = now() + interval '2 seconds' WHERE id = '$s_id'");
is(validate_n($node, $db, $s_key, 1), 'valid', 'a key that expires in 2 s is still valid');
$t0 = time;
$took = listen_for($s_id, 8);
ok(defined $took, sprintf('... is announced when its time comes (%.2fs)', time - $t0));
is(sql($node, $db, "SELECT expired_at >= expires_at FROM apikeys.keys WHERE id = '$s_id'"),
	't', '... and marked expired at or after its expires_at');
is(validate_n($node, $db, $s_key, 1), 'expired', "... and validates 'expired'");

# two more passes: nothing is expired twice
usleep(2_500_000);
$heard .= $listener->query('SELECT 1') . "\n";
my %times;
$times{$1}++ while $heard =~ /Asynchronous notification "apikeys_expired" with payload "([^"]*)"/g;
is_deeply(\%times, { $e_id => 1, $s_id => 1 },
	'exactly one notification each for the two expired keys, none for the others');
is(sql($node, $db, q{SELECT string_agg(key_id || ':' || n, ',' ORDER BY key_id) FROM
	(SELECT key_id, count(*) AS n FROM apikeys.audit WHERE event = 'expired' GROUP BY key_id) s}),
	join(',', map { "$_:1" } sort ($e_id, $s_id)),
	'exactly one expired audit event each, for those two keys only');
is(sql($node, $db, qq{SELECT string_agg(id, ',' ORDER BY id) FROM apikeys.keys WHERE expired_at IS NULL}),
	join(',', sort ($rv_id, $f_id, $n_id)), 'the other keys are not marked expired');
is(sql($node, $db, "SELECT status FROM apikeys.apikey_list('gina') WHERE id = '$f_id'"),
	'active', 'the key with a future expiry is active');
$listener->quit;

# ---------------------------------------------------------------------------
# 2. Retention
# ---------------------------------------------------------------------------
my $today = utc_today($node);
sub put_days
{
	my @days = @_;
	sql($node, $db, 'INSERT INTO apikeys.usage (key_id, day, calls, rejected) VALUES '
		  . join(', ', map { "('$n_id', '$today'::date - $_, $_, 1)" } @days));
}
sub days_kept
{
	return sql($node, $db, qq{SELECT string_agg(('$today'::date - day)::text, ',' ORDER BY day)
		FROM apikeys.usage WHERE key_id = '$n_id'});
}
put_days(500, 401, 400, 10);
is(days_kept(), '500,401,400,10', 'usage rows 500, 401, 400 and 10 days old');
# a standby silent for longer than the retention is forgotten too
sql($node, $db, q{INSERT INTO apikeys.standby_batches (source, standby, last_batch, last_batch_at)
	VALUES (gen_random_uuid(), 'silent', 5, now() - interval '401 days'),
	       (gen_random_uuid(), 'recent', 5, now() - interval '10 days')});
$node->restart;
$took = wait_until($node, $db,
	"SELECT count(*) FROM apikeys.usage WHERE key_id = '$n_id' AND day < '$today'::date - 400", '0', 10);
ok(defined $took, sprintf('after a restart the worker applies retention (%.2fs)', $took // -1));
is(days_kept(), '400,10',
	'with usage_retention_days = 400: rows older than 400 days are gone, 400 days old and newer stay');
is(sql($node, $db, 'SELECT string_agg(standby, \',\') FROM apikeys.standby_batches'), 'recent',
	'the row of a standby silent for more than 400 days is gone, a recent one stays');

# the minimum is 90
like(sql_fails($node, $db, 'ALTER SYSTEM SET apikeys.usage_retention_days = 30'),
	qr/30 is outside the valid range for parameter "apikeys.usage_retention_days" \(90 \.\. /,
	'ALTER SYSTEM SET apikeys.usage_retention_days = 30 is refused (minimum 90)');
like(sql_fails($node, $db, 'ALTER SYSTEM SET apikeys.usage_retention_days = 89'),
	qr/outside the valid range/, '... and so is 89');
isnt(sql_fails($node, $db, 'SET apikeys.usage_retention_days = 30'), '',
	'SET apikeys.usage_retention_days = 30 is refused');
is(sql_fails($node, $db, 'ALTER SYSTEM SET apikeys.usage_retention_days = 90'), '',
	'90 is accepted');
put_days(91, 90);
$node->restart;
is(sql($node, $db, 'SHOW apikeys.usage_retention_days'), '90', 'restarted with 90');
$took = wait_until($node, $db,
	"SELECT count(*) FROM apikeys.usage WHERE key_id = '$n_id' AND day < '$today'::date - 90", '0', 10);
ok(defined $took, 'retention ran at worker start');
is(days_kept(), '90,10', 'with 90: the rows 400 and 91 days old are gone, 90 and 10 stay');

# in postgresql.conf, 30 is ignored (with a complaint), not applied
sql($node, $db, 'ALTER SYSTEM RESET apikeys.usage_retention_days');
$node->adjust_conf('postgresql.conf', 'apikeys.usage_retention_days', '30');
put_days(401, 31);
my $offset = -s $node->logfile;
$node->restart;
is(sql($node, $db, 'SHOW apikeys.usage_retention_days'), '400',
	'usage_retention_days = 30 in postgresql.conf is not applied (the default 400 holds)');
like(slurp_file($node->logfile, $offset), qr/30 is outside the valid range for parameter "apikeys.usage_retention_days"/,
	'... and the server log says why');
$took = wait_until($node, $db,
	"SELECT count(*) FROM apikeys.usage WHERE key_id = '$n_id' AND day < '$today'::date - 400", '0', 10);
ok(defined $took, 'retention ran at worker start');
is(days_kept(), '90,31,10', '... with 400 days: the row 31 days old stays');

check_no_crash($node);
$node->stop;
done_testing();
