# 017_standby_credits_limits.pl -- credits and rate limits on a hot standby
# (SPEC 11, 12, 13; issues 13 and 14).
#
# A standby cannot lease credits (a lease writes a row), so apikey_charge
# there must refuse with a clear error and never spend a balance the
# primary could also spend; balances still read there.  Rate limits are
# per server: a standby counts its own requests in its own shared memory,
# with no row written, and the primary's window is untouched by them.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $db = 'postgres';
my ($primary, $standby) = streaming_pair($db);

my ($id, $key) = create_key($primary, $db, 'acme', 'standby key');
sql($primary, $db, "SELECT apikeys.apikey_credit_add('acme', 'email_credit', 10)");
# charged once on the primary, so that part of the balance is leased there
is(sql($primary, $db, "SELECT code || ' ' || remaining FROM apikeys.apikey_charge('$key', 'email_credit')"),
	'valid 9.0', 'a charge on the primary works');
sql($primary, $db, "SELECT apikeys.apikey_ratelimit_set('hourly', 2, '1 hour', key_id => '$id')");
$primary->wait_for_catchup($standby);

# credits: a clear refusal on the standby, nothing spent
my $err = sql_fails($standby, $db, "SELECT * FROM apikeys.apikey_charge('$key', 'email_credit')");
like($err, qr/cannot charge credits on a hot standby/, 'apikey_charge on a standby refuses');
my ($ret, $out, $stderr) = $standby->psql($db,
	"\\set VERBOSITY verbose\nSELECT * FROM apikeys.apikey_charge('$key', 'email_credit')");
like($stderr, qr/25006/, 'with SQLSTATE 25006 (read_only_sql_transaction)');
is(sql($primary, $db, "SELECT apikeys.apikey_credits('acme')"), '{"email_credit": 9.0}',
	'the primary balance is unchanged by the refused standby charge');
like(sql($standby, $db, "SELECT (apikeys.apikey_credits('acme'))->>'email_credit'"),
	qr/^\d+\.\d+$/, 'apikey_credits reads on the standby');

# rate limits: per server, in shared memory
my $codes = sql($standby, $db,
	"SELECT string_agg((apikeys.apikey_validate('$key')).code, ',') FROM generate_series(1, 3)");
is($codes, 'valid,valid,rate_limited', 'a limit of 2 per hour holds on the standby');
is(sql($standby, $db, "SELECT ratelimit_limit || ' ' || ratelimit_remaining FROM apikeys.apikey_validate('$key')"),
	'2 0', 'the standby reports its own window');
# the primary's window is its own: the standby's calls did not use it
is(sql($primary, $db, "SELECT code || ' ' || ratelimit_remaining FROM apikeys.apikey_validate('$key')"),
	'valid 1', "the primary's window is untouched by the standby's requests");

# a limit dropped on the primary is gone on the standby at replay
sql($primary, $db, "SELECT apikeys.apikey_ratelimit_drop('hourly', key_id => '$id')");
$primary->wait_for_catchup($standby);
is(sql($standby, $db, "SELECT code || ' ' || coalesce(ratelimit_limit::text, 'none') FROM apikeys.apikey_validate('$key')"),
	'valid none', 'a dropped limit is gone on the standby once replayed');

check_no_crash($primary, 'primary');
check_no_crash($standby, 'standby');
$standby->stop;
$primary->stop;
done_testing();
