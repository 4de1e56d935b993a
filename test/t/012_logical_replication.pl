# 012_logical_replication.pl -- a key revoked on a logical-replication
# publisher reads 'revoked' on the subscriber as soon as the revocation is
# applied, in a subscriber session that had the key cached (issue 12).
#
# The apply worker fires row-level triggers only (and TRUNCATE ones): the
# per-backend key cache must be invalidated from a row-level trigger.  A
# session on the subscriber validates the key (which caches it), then keeps
# validating in one transaction until it reads 'revoked', for at most 20 s.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $db = 'postgres';
my $pub = new_node('publisher', 'wal_level = logical', 'max_wal_senders = 10',
	'max_replication_slots = 10');
my $sub = new_node('subscriber');
create_extension($pub, $db);
create_extension($sub, $db);

sql($pub, $db, 'CREATE PUBLICATION apikeys_pub FOR TABLE apikeys.scopes, apikeys.keys');
# the subscriber already has the shipped scopes: copy keys only at first
my $connstr = $pub->connstr($db);
$connstr =~ s/'/''/g;
sql($sub, $db, "CREATE SUBSCRIPTION apikeys_sub CONNECTION '$connstr'"
	  . ' PUBLICATION apikeys_pub WITH (copy_data = false)');
$sub->wait_for_subscription_sync($pub, 'apikeys_sub');

my ($id, $key) = create_key($pub, $db, 'lena', 'replicated');
my ($id2, $key2) = create_key($pub, $db, 'lena', 'scope change', "scope => 'full'");
$pub->wait_for_catchup('apikeys_sub');
is(sql($sub, $db, "SELECT count(*) FROM apikeys.keys WHERE id IN ('$id', '$id2')"), '2',
	'the keys reached the subscriber');

# a subscriber session: validate (caching the key), then poll within one
# transaction until the answer changes
sub watcher
{
	my ($k, $perm, $from) = @_;
	my $p = defined $perm ? "'$perm'" : 'NULL';
	return start_psql($sub, $db, qq{
		SELECT 'first:' || (apikeys.apikey_validate('$k', $p)).code;
		DO \$\$
		DECLARE c text; n int := 0;
		BEGIN
			LOOP
				c := (apikeys.apikey_validate('$k', $p)).code;
				EXIT WHEN c <> '$from' OR n >= 200;
				n := n + 1;
				PERFORM pg_sleep(0.1);
			END LOOP;
			RAISE NOTICE 'last:% after % polls', c, n;
		END \$\$;});
}

my $w = watcher($key, undef, 'valid');
usleep(500_000);
my $t0 = time;
is(sql($pub, $db, "SELECT apikeys.apikey_revoke('$id')"), 't', 'revoked on the publisher');
$pub->wait_for_catchup('apikeys_sub');
my ($ok, $out, $err) = finish_psql($w);
like($out, qr/first:valid/, 'the subscriber session first read the key valid');
like($err, qr/last:revoked/, sprintf('... and reads it revoked once the revocation is applied (%.2fs)', time - $t0))
  or diag("stdout: $out\nstderr: $err");

# a scope edit travels the same way
$w = watcher($key2, 'lists:write', 'valid');
usleep(500_000);
sql($pub, $db, "UPDATE apikeys.scopes SET permissions = '{*:read}' WHERE name = 'full'");
$pub->wait_for_catchup('apikeys_sub');
($ok, $out, $err) = finish_psql($w);
like($err, qr/last:insufficient_scope/, 'an edited scope applies on the subscriber at once')
  or diag("stdout: $out\nstderr: $err");

check_no_crash($pub);
check_no_crash($sub);
$sub->stop;
$pub->stop;
done_testing();
