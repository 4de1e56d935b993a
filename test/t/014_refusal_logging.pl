# 014_refusal_logging.pl -- refused requests do not flood the server log
# (issue 12): 200 authentications refused with PT401/PT403, the way the
# HTTP pre-request raises them, add fewer than 20 lines to the log by
# default; with apikeys.log_refusals = on each is logged, never with the
# key or the statement that carried it.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $db = 'postgres';
my $node = new_node('refusals', "log_min_error_statement = 'error'");
create_extension($node, $db);
my ($id, $key) = create_key($node, $db, 'ivy', 'boxed', "ip_restrictions => '{203.0.113.0/24}'");
my (undef, $revoked) = create_key($node, $db, 'ivy', 'revoked');
sql($node, $db, "SELECT apikeys.apikey_revoke(id) FROM apikeys.keys WHERE name = 'revoked'");

# refuse_top(N): N refusals of each kind (unknown, revoked, wrong address),
# each a failing statement of its own, as a refused PostgREST request is
sub refuse_top
{
	my ($n) = @_;
	my $failed = 0;
	for my $i (1 .. $n)
	{
		for my $q ("SELECT apikeys._authenticate(\$k\$garbage-$i\$k\$, NULL, NULL)",
			"SELECT apikeys._authenticate('$revoked', NULL, NULL)",
			"SELECT apikeys._authenticate('$key', NULL, '198.51.100.7')")
		{
			my ($ret) = $node->psql($db, $q, on_error_die => 0);
			$failed++ if $ret != 0;
		}
	}
	return $failed;
}

my $off = -s $node->logfile;
is(refuse_top(67), 201, '201 refused authentications (unknown, revoked, address)');
my $log = slurp_file($node->logfile, $off);
my $lines = () = $log =~ /\n/g;
ok($lines < 20, "they added $lines lines to the server log (fewer than 20)") or diag($log);

sql($node, $db, 'ALTER SYSTEM SET apikeys.log_refusals = on');
sql($node, $db, 'SELECT pg_reload_conf()');
sleep 1;
$off = -s $node->logfile;
is(refuse_top(2), 6, '6 refused authentications with apikeys.log_refusals = on');
$log = slurp_file($node->logfile, $off);
my @errors = $log =~ /^.*ERROR:.*$/mg;
is(scalar @errors, 6, '... each is logged as an ERROR') or diag($log);
ok(index($log, $key) < 0 && index($log, $revoked) < 0, '... and no line holds a key');
unlike($log, qr/STATEMENT:/, '... nor the statement that carried it');

check_no_crash($node);
$node->stop;
done_testing();
