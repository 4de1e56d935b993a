# test/t/ApikeysTAP.pm -- helpers shared by the apikeys TAP tests (test/t/*.pl).
#
# Every helper is bounded in time: psql and pgbench runs carry a timeout, and
# polling gives up after the number of seconds it is given, so a hung server
# fails a test instead of hanging the suite.
package ApikeysTAP;

use strict;
use warnings FATAL => 'all';

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(
  new_node streaming_pair create_extension create_key create_keys sql sql_ok sql_fails
  validate_n run_pgbench flush_usage usage_of usage_rows worker_pids
  wait_until wait_for_worker wait_for_no_worker wait_for_log_within
  start_psql finish_psql elapsed_since utc_today check_no_crash timed
  matrix_counts code_of
);

# Seconds any single psql / pgbench call may take before the test fails.
our $CALL_TIMEOUT = 60;

# new_node(NAME, CONF_LINES...) -- init and start a node that preloads
# apikeys, with the given extra postgresql.conf lines.
sub new_node
{
	my ($name, @conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'apikeys'",
		"max_worker_processes = 16",
		# keys travel as SQL literals in these tests: keep them out of the log
		"log_statement = 'none'",
		# a crashed process must not end the whole test: the server
		# reinitialises, and check_no_crash reports the crash
		'restart_after_crash = on',
		@conf));
	$node->start;
	return $node;
}

# streaming_pair(DB, PRIMARY_CONF, STANDBY_CONF) -- a primary that preloads
# apikeys (flush_interval 200 ms) with the extension in DB, and a hot
# standby streaming from it, both started; PRIMARY_CONF and STANDBY_CONF
# are array refs of extra postgresql.conf lines.  Returns (primary, standby).
sub streaming_pair
{
	my ($db, $primary_conf, $standby_conf) = @_;
	my $primary = PostgreSQL::Test::Cluster->new('primary');
	$primary->init(allows_streaming => 1);
	$primary->append_conf('postgresql.conf', join("\n",
		"shared_preload_libraries = 'apikeys'", 'max_worker_processes = 16',
		"log_statement = 'none'", 'apikeys.flush_interval = 200',
		@{ $primary_conf // [] }));
	$primary->start;
	create_extension($primary, $db);
	$primary->backup('base');
	my $standby = PostgreSQL::Test::Cluster->new('standby');
	$standby->init_from_backup($primary, 'base', has_streaming => 1);
	$standby->append_conf('postgresql.conf', join("\n", @{ $standby_conf // [] }));
	$standby->start;
	return ($primary, $standby);
}

# sql(NODE, DB, SQL) -- run SQL, die on error or timeout; returns stdout.
# A connection refused while the server reinitialises after a crash is
# retried for up to 30 s (check_no_crash reports the crash itself).
sub sql
{
	my ($node, $db, $query) = @_;
	my $t0 = time;
	while (1)
	{
		my ($ret, $out, $err) = $node->psql($db, $query,
			timeout => $CALL_TIMEOUT, on_error_die => 0);
		return $out if $ret == 0;
		if ($ret == 2 && $err =~ /connection to server .* failed/ && time - $t0 < 30)
		{
			diag("cannot connect, retrying: $err");
			usleep(200_000);
			next;
		}
		die "SQL failed in $db (exit $ret): $err\nSQL: $query\n";
	}
}

# timed(NODE, DB, SQL, SECONDS) -- run SQL under statement_timeout SECONDS,
# so that a hang fails the caller instead of the suite; returns (ok, stdout
# or stderr, seconds taken).
sub timed
{
	my ($node, $db, $query, $seconds) = @_;
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql($db, "SET statement_timeout = '${seconds}s'; $query",
		timeout => $seconds + 30, on_error_die => 0);
	return ($ret == 0 ? 1 : 0, $ret == 0 ? $out : $err, time - $t0);
}

# check_no_crash(NODE, [OFFSET], [LABEL]) -- a test that no server process
# died of a signal (or the server reinitialised) since log OFFSET.
# SIGKILLs sent by a test (signal 9) are not counted.
sub check_no_crash
{
	my ($node, $offset, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $log = slurp_file($node->logfile, $offset // 0);
	my @crash = $log =~ /^(.*(?:terminated by signal (?!9:)|exited with exit code [2-9]|PANIC:).*)$/mg;
	ok(!@crash, $label // 'no server process crashed') or diag(join("\n", @crash));
	return;
}

# sql_ok(NODE, DB, SQL, NAME) -- a test that SQL succeeds; returns stdout.
sub sql_ok
{
	my ($node, $db, $query, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($ret, $out, $err) = $node->psql($db, $query,
		timeout => $CALL_TIMEOUT, on_error_die => 0);
	ok($ret == 0, $name) or diag("exit $ret, stderr: $err");
	return $out;
}

# sql_fails(NODE, DB, SQL) -- run SQL that should fail; returns stderr
# ('' if it succeeded).
sub sql_fails
{
	my ($node, $db, $query) = @_;
	my ($ret, $out, $err) = $node->psql($db, $query,
		timeout => $CALL_TIMEOUT, on_error_die => 0);
	return $ret == 0 ? '' : $err;
}

sub create_extension
{
	my ($node, $db) = @_;
	sql($node, $db, 'CREATE EXTENSION apikeys CASCADE');
	return;
}

# create_key(NODE, DB, OWNER, NAME, EXTRA_ARGS) -- mint a key; returns
# (id, key). EXTRA_ARGS is appended to the named-argument list.
sub create_key
{
	my ($node, $db, $owner, $name, $extra) = @_;
	$extra = defined $extra ? ", $extra" : '';
	my $out = sql($node, $db,
		"SELECT id || ' ' || key FROM apikeys.apikey_create(owner => '$owner', name => '$name'$extra)"
	);
	my ($id, $key) = split / /, $out;
	die "apikey_create returned '$out'" unless defined $key && $id =~ /^key_/;
	return ($id, $key);
}

# create_keys(NODE, DB, OWNER, N) -- mint N keys in one statement and keep
# them in table public.test_keys(n, id, key) as well; returns a list of
# [id, key] pairs, in order of n.
sub create_keys
{
	my ($node, $db, $owner, $n) = @_;
	my $out = sql($node, $db, qq{
		CREATE TABLE IF NOT EXISTS public.test_keys (n int PRIMARY KEY, id text NOT NULL, key text NOT NULL);
		INSERT INTO public.test_keys
		SELECT g, k.id, k.key
		  FROM generate_series(1, $n) AS g,
		       LATERAL apikeys.apikey_create(owner => '$owner', name => 'bulk ' || g) AS k;
		SELECT id || ' ' || key FROM public.test_keys ORDER BY n;
	});
	return map { [ split / /, $_ ] } split /\n/, $out;
}

# validate_n(NODE, DB, KEY, N, [PERMISSION], [CLIENT_IP]) -- validate KEY N
# times in one statement (the function is evaluated once per row); returns
# the distinct codes seen, comma-separated.
sub validate_n
{
	my ($node, $db, $key, $n, $perm, $ip) = @_;
	my $args = "'$key'";
	$args .= defined $perm ? ", '$perm'" : ', NULL';
	$args .= defined $ip ? ", '$ip'" : ', NULL';
	my $out = sql($node, $db, qq{
		SELECT count(*) || ':' || string_agg(DISTINCT (v).code, ',')
		  FROM (SELECT apikeys.apikey_validate($args) AS v
		          FROM generate_series(1, $n)) AS s});
	my ($count, $codes) = split /:/, $out;
	die "validate_n: $count validations instead of $n" unless $count == $n;
	return $codes;
}

# run_pgbench(NODE, DB, CLIENTS, TXNS, SCRIPT, VARS) -- run SCRIPT with
# pgbench -M prepared, CLIENTS clients, TXNS transactions each, with the
# variables in hashref VARS; a test that every transaction was processed.
my $script_no = 0;
sub run_pgbench
{
	my ($node, $db, $clients, $txns, $script, $vars) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $file = $node->basedir . '/pgbench_' . (++$script_no) . '.sql';
	PostgreSQL::Test::Utils::append_to_file($file, $script);
	my @cmd = (
		'pgbench', '-n', '-M', 'prepared',
		'-c', $clients, '-j', ($clients < 4 ? $clients : 4),
		'-t', $txns, '-f', $file,
		(map { ('-D', "$_=$vars->{$_}") } sort keys %$vars),
		'-h', $node->host, '-p', $node->port, $db);
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run(\@cmd, '>', \$out, '2>', \$err,
		IPC::Run::timeout($CALL_TIMEOUT));
	my $total = $clients * $txns;
	ok($ok && $out =~ m{number of transactions actually processed: $total/$total},
		"pgbench ran $total transactions ($clients clients x $txns)")
	  or diag("pgbench stdout:\n$out\nstderr:\n$err");
	return;
}

# flush_usage(NODE, DB) -- a test that apikeys.flush_usage() returns true.
sub flush_usage
{
	my ($node, $db, $name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $t0 = time;
	my $out = sql($node, $db, 'SELECT apikeys.flush_usage()');
	is($out, 't', ($name // "flush_usage() in $db returns true")
		  . sprintf(' (%.2fs)', time - $t0));
	return;
}

# usage_of(NODE, DB) -- hashref key_id => [calls, rejected], summed over
# days, straight from apikeys.usage.
sub usage_of
{
	my ($node, $db) = @_;
	my %u;
	for my $line (split /\n/, sql($node, $db,
			'SELECT key_id, sum(calls), sum(rejected) FROM apikeys.usage GROUP BY key_id'))
	{
		my ($id, $c, $r) = split /\|/, $line;
		$u{$id} = [ $c + 0, $r + 0 ];
	}
	return \%u;
}

# usage_rows(NODE, DB) -- number of rows in apikeys.usage.
sub usage_rows
{
	my ($node, $db) = @_;
	return sql($node, $db, 'SELECT count(*) FROM apikeys.usage') + 0;
}

# worker_pids(NODE, [DATNAME]) -- sorted pids of 'apikeys worker' processes
# (of one database, if given).
sub worker_pids
{
	my ($node, $datname) = @_;
	my $where = defined $datname ? "AND datname = '$datname'" : '';
	my $out = sql($node, 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'apikeys worker' $where ORDER BY pid");
	return split /\n/, $out;
}

sub elapsed_since { return time - $_[0]; }

# wait_until(NODE, DB, SQL, EXPECTED, SECONDS) -- poll SQL until it prints
# EXPECTED; returns the seconds it took, or undef after SECONDS.
sub wait_until
{
	my ($node, $db, $query, $expected, $seconds) = @_;
	my $t0 = time;
	my $last = '';
	while (1)
	{
		my ($ret, $out, $err) = $node->psql($db, $query,
			timeout => $CALL_TIMEOUT, on_error_die => 0);
		$last = "exit $ret, stdout '$out', stderr '$err'";
		return time - $t0 if $ret == 0 && $out eq $expected;
		last if time - $t0 > $seconds;
		usleep(50_000);
	}
	diag("wait_until gave up after ${seconds}s: $query\nexpected '$expected', last: $last");
	return undef;
}

# wait_for_worker(NODE, DATNAME, SECONDS, [NOT_PID]) -- wait until
# DATNAME has exactly one 'apikeys worker' (other than NOT_PID); returns its
# pid, or undef.
sub wait_for_worker
{
	my ($node, $datname, $seconds, $not_pid) = @_;
	my $exclude = defined $not_pid ? "AND pid <> $not_pid" : '';
	my $took = wait_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND datname = '$datname' $exclude",
		'1', $seconds);
	return undef unless defined $took;
	my @pids = worker_pids($node, $datname);
	note(sprintf('worker of %s is pid %s (%.2fs)', $datname, "@pids", $took));
	return $pids[0];
}

# wait_for_no_worker(NODE, WHERE, SECONDS) -- wait until no 'apikeys worker'
# matches the pg_stat_activity condition WHERE; returns seconds or undef.
sub wait_for_no_worker
{
	my ($node, $where, $seconds) = @_;
	return wait_until($node, 'postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND ($where)",
		'0', $seconds);
}

# wait_for_log_within(NODE, REGEX, OFFSET, SECONDS) -- wait until the server
# log after OFFSET matches REGEX; returns the new offset, or undef.
sub wait_for_log_within
{
	my ($node, $regex, $offset, $seconds) = @_;
	my $t0 = time;
	while (time - $t0 <= $seconds)
	{
		my $log = slurp_file($node->logfile, $offset);
		return $offset + length($log) if $log =~ m/$regex/;
		usleep(100_000);
	}
	return undef;
}

# start_psql(NODE, DB, SQL) -- run psql -c SQL in the background (one
# query string: several statements run as one implicit transaction);
# returns a handle for finish_psql.  The query is on the command line, so
# it starts at once (IPC::Run feeds stdin only while pumping).
sub start_psql
{
	my ($node, $db, $query) = @_;
	my $h = { out => '', err => '' };
	my $in = '';
	$h->{run} = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db), '-c', $query ],
		'<', \$in, '>', \$h->{out}, '2>', \$h->{err},
		IPC::Run::timeout($CALL_TIMEOUT));
	return $h;
}

# finish_psql(HANDLE) -- wait for it; returns (ok, stdout, stderr).
sub finish_psql
{
	my ($h) = @_;
	my $ok = eval { $h->{run}->finish };
	if ($@)
	{
		$h->{run}->kill_kill;
		return (0, $h->{out}, "$h->{err}\n$@");
	}
	chomp $h->{out};
	return ($ok ? 1 : 0, $h->{out}, $h->{err});
}

# matrix_counts(MATRIX) -- what a validation matrix run added to usage:
# key id => [calls, rejected].  MATRIX has lines label|permission|address|
# code|key id (key id "-" for an unknown key).
sub matrix_counts
{
	my ($matrix) = @_;
	my %c;
	for (split /\n/, $matrix)
	{
		my (undef, undef, undef, $code, $id) = split /\|/;
		next if $id eq '-';
		$c{$id} //= [ 0, 0 ];
		$c{$id}[ $code eq 'valid' ? 0 : 1 ]++;
	}
	return \%c;
}

# code_of(MATRIX, LABEL, PERMISSION, ADDRESS) -- the outcome code of one case.
sub code_of
{
	my ($matrix, $label, $p, $ip) = @_;
	my ($line) = grep { /^\Q$label|$p|$ip|\E/ } split /\n/, $matrix;
	return (split /\|/, $line // '')[3] // 'missing';
}

sub utc_today
{
	my ($node) = @_;
	return sql($node, 'postgres', "SELECT (now() AT TIME ZONE 'UTC')::date");
}

1;
