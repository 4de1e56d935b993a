# 009_day_in_production.pl -- a day in production, compressed: thousands of
# distinct keys validated from concurrent sessions through a counter table
# twenty times too small, while database DDL and signals hit the launcher
# and the workers.  Every validation must be counted exactly once and none
# may wait longer than one flush interval (plus slack).
#
# apikeys.max_tracked_keys = 100 (the minimum), flush_interval = 1 s.
#
#   - three databases with the extension, 800 keys each (every 10th
#     revoked); two sessions per database validate all of their keys in
#     batches of 40, pass after pass, for the whole test: 2,400 distinct
#     keys (24 x max_tracked_keys) a day, each validation timed on its own
#     inside SQL
#   - before the load the table is filled with exactly 100 flushed keys of
#     today: the next new key must not wait for the end of the UTC day
#   - meanwhile a chaos process, cycle after cycle: CREATE/DROP DATABASE of
#     scratch databases (with the extension and counted validations, copied
#     by CREATE DATABASE ... TEMPLATE, and without it); DROP DATABASE
#     cancelled by statement_timeout = 3ms; DROP DATABASE by a login role
#     without privileges (refused, also with the 3 ms timeout); DROP
#     DATABASE refused because a session is connected; DROP/CREATE
#     EXTENSION; ALTER DATABASE ... ALLOW_CONNECTIONS false then true on a
#     counted database while a connected session keeps validating;
#     pg_cancel_backend of the launcher and of a worker (both must survive);
#     pg_terminate_backend of a worker (replaced), then of the launcher
#     (restarted by the postmaster)
#   - at the end, after flush_usage(): every key's calls and rejected in
#     apikeys.usage are exactly what was sent; the longest single validation
#     took less than flush_interval + 3 s; one worker per database with the
#     extension and none for dropped ones; the launcher runs; no worker is
#     started during a quiet 6 s once things settled (a launcher that
#     restarts duplicate workers shows up here); no process crashed
#
# About 60-90 s on two cores.  APIKEYS_CHAOS_SCALE=N (default 1) multiplies
# the keys and the load time, for a soak.  Sessions and the chaos process are forked children that talk
# to the server only through psql with timeouts; a hung validation ends its
# session and fails the test instead of hanging it.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use IPC::Run;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $scale = $ENV{APIKEYS_CHAOS_SCALE} // 1;
$scale = 1 unless $scale =~ /^[1-9][0-9]*$/;

my $max_tracked = 100;
my $flush_s = 1;
my $wait_limit_s = $flush_s + 3;    # the longest a validation may take
my $nkeys = 800 * $scale;           # per main database
my $batch = 40;                     # keys per validate_batch() call
my $load_s = 30 * $scale;           # the load runs at least this long
my $batch_timeout = 20;             # seconds: a batch this slow has hung
my @main_dbs = qw(db1 db2 db3);
my $allowconn_db = 'db3';           # ALLOW_CONNECTIONS false/true
my $cancel_db = 'db1';              # pg_cancel_backend of its worker
my $terminate_db = 'db2';           # pg_terminate_backend of its worker

my $node = new_node('day_in_production',
	"apikeys.max_tracked_keys = $max_tracked",
	"apikeys.flush_interval = '${flush_s}s'",
	'max_worker_processes = 20',
	# the postmaster logs every background worker it starts at DEBUG1:
	# how duplicate workers are counted
	'log_min_messages = debug1');
my $dir = $node->basedir;
is(sql($node, 'postgres', 'SHOW apikeys.max_tracked_keys'), $max_tracked,
	"max_tracked_keys is $max_tracked");

# validate_batch(ns): validates the keys public.test_keys.n = ns, in order,
# one at a time, timing each validation; returns "calls valid worst_ms
# slow" (slow: validations that took 50 ms or more).  In template1, so
# that every database created later has it.
sql($node, 'template1', q{
	CREATE FUNCTION public.validate_batch(ns int[]) RETURNS text LANGUAGE plpgsql AS $$
	DECLARE
		k text;
		t0 timestamptz;
		took float8;
		worst float8 := 0;
		slow int := 0;
		total int := 0;
		nvalid int := 0;
		v record;
	BEGIN
		FOR k IN SELECT t.key FROM unnest(ns) WITH ORDINALITY AS u(n, o)
		           JOIN public.test_keys t ON t.n = u.n ORDER BY u.o
		LOOP
			t0 := clock_timestamp();
			SELECT * INTO v FROM apikeys.apikey_validate(k);
			took := extract(epoch FROM clock_timestamp() - t0) * 1000;
			worst := greatest(worst, took);
			slow := slow + (took >= 50)::int;
			total := total + 1;
			nvalid := nvalid + v.valid::int;
		END LOOP;
		RETURN total || ' ' || nvalid || ' ' || round(worst::numeric, 1) || ' ' || slow;
	END $$;
	REVOKE ALL ON FUNCTION public.validate_batch(int[]) FROM PUBLIC});
sql($node, 'postgres', 'CREATE ROLE mallory LOGIN');

# ---------------------------------------------------------------------------
# Set-up: three databases, their keys, their workers
# ---------------------------------------------------------------------------
my %ids;       # db => [undef, id of key 1, id of key 2, ...]
my %expect;    # db => { n => validations made }
for my $db (@main_dbs)
{
	sql($node, 'postgres', "CREATE DATABASE $db");
	create_extension($node, $db);
	my $t0 = time;
	my @keys = create_keys($node, $db, "owner_$db", $nkeys);
	$ids{$db} = [ undef, map { $_->[0] } @keys ];
	sql($node, $db, 'SELECT count(apikeys.apikey_revoke(id)) FROM public.test_keys WHERE n % 10 = 0');
	note(sprintf('%s: %d keys minted, every 10th revoked (%.1fs)', $db, scalar @keys, time - $t0));
	ok(defined wait_for_worker($node, $db, 10), "$db gets its worker");
}

sub revoked { return $_[0] % 10 == 0; }

# batch_result(NS, OUT) -- checks one validate_batch() result against the
# keys it validated; returns (ok, worst_ms, slow).
sub batch_result
{
	my ($ns, $out) = @_;
	my ($calls, $valid, $worst, $slow) = split / /, $out // '';
	my $want_valid = grep { !revoked($_) } @$ns;
	return (0, 0, 0) unless defined $slow;
	return ($calls == @$ns && $valid == $want_valid, $worst, $slow);
}

# ---------------------------------------------------------------------------
# 1. A table full of today's flushed keys: the next new key must not wait
# ---------------------------------------------------------------------------
{
	my @ns = 1 .. $max_tracked;
	my $out = sql($node, 'db1', "SELECT public.validate_batch('{" . join(',', @ns) . "}')");
	my ($ok) = batch_result(\@ns, $out);
	ok($ok, "db1: $max_tracked distinct keys validated: the counter table is exactly full");
	$expect{db1}{$_}++ for @ns;
	flush_usage($node, 'db1', "flush_usage(): the table now holds $max_tracked flushed keys of today");

	my $n = $max_tracked + 1;
	my $t0 = time;
	my ($ret, $res, $err) = $node->psql('db1', "SELECT public.validate_batch('{$n}')",
		timeout => 3 * $wait_limit_s, timed_out => \my $timed_out, on_error_die => 0);
	my $took = time - $t0;
	ok(!$timed_out && $ret == 0 && (batch_result([$n], $res))[0],
		sprintf('one more new key validates (%.2fs)%s', $took, $timed_out ? ': it hung' : ''))
	  or diag($timed_out ? 'no answer in ' . 3 * $wait_limit_s . ' s' : "exit $ret, '$res': $err");
	ok($took < $wait_limit_s,
		sprintf('... in less than flush_interval + 3 s, not at the end of the UTC day (%.2fs)', $took));
	$expect{db1}{$n}++ if !$timed_out && $ret == 0;
}

# ---------------------------------------------------------------------------
# Child processes: validating sessions and the chaos
# ---------------------------------------------------------------------------
my $t_load = time;
my $load_end = $t_load + $load_s;
my $hard_stop = $load_end + 90 * $scale;    # nothing new starts after this
my $chaos_done = "$dir/chaos.done";
unlink $chaos_done;

# run_psql(DB, QUERIES, %opts) -- psql with each query as its own -c (its
# own transaction); opts: timeout (s, default 30), user.  Returns (exit code,
# stdout, stderr, seconds); exit code -1 when it timed out (psql killed).
sub run_psql
{
	my ($db, $queries, %o) = @_;
	my ($in, $out, $err) = ('', '', '');
	my @cmd = ('psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db),
		($o{user} ? ('-U', $o{user}) : ()), map { ('-c', $_) } @$queries);
	my $t0 = time;
	my $rc;
	eval {
		IPC::Run::run(\@cmd, '<', \$in, '>', \$out, '2>', \$err,
			IPC::Run::timeout($o{timeout} // 30));
		$rc = $? >> 8;
		1;
	} or $rc = -1;
	chomp $out;
	$err =~ s/\s+$//;
	return ($rc, $out, $err, time - $t0);
}

# spawn(NAME, CODE) -- runs CODE in a forked child whose lines go to
# $dir/NAME.out; returns the pid.  The child never runs END blocks (they
# would stop the node) and never talks TAP.
sub spawn
{
	my ($name, $code) = @_;
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	return $pid if $pid;
	my $rc = 0;
	open my $fh, '>', "$dir/$name.out" or POSIX::_exit(3);
	$fh->autoflush(1);
	eval { $code->($fh); 1 } or do { print $fh "error\tdied: $@\n"; $rc = 1; };
	print $fh "done\n";
	close $fh;
	POSIX::_exit($rc);
}

# A validating session: the keys of DB in its own order, batch after batch,
# until the load time is over and the chaos is done.  Records how often it
# validated each key, and its worst single validation.
sub session_main
{
	my ($db, $sid, $fh) = @_;
	my @order = $sid % 2 ? reverse(1 .. $nkeys) : (1 .. $nkeys);
	my %count;
	my ($batches, $worst, $slow, $refused, $passes) = (0, 0, 0, 0, 0);
	my $pos = 0;
	while (1)
	{
		my $now = time;
		last if $now > $hard_stop;
		last if $now > $load_end && -e $chaos_done && $passes >= 1;
		my $last = $pos + $batch - 1;
		$last = $#order if $last > $#order;
		my @ns = @order[ $pos .. $last ];
		my ($rc, $out, $err, $took) = run_psql($db,
			[ "SELECT public.validate_batch('{" . join(',', @ns) . "}')" ],
			timeout => $batch_timeout);
		if ($rc == 2 && $err =~ /is not currently accepting connections/)
		{
			$refused++;    # ALLOW_CONNECTIONS false: nothing was validated
			usleep(200_000);
			next;
		}
		if ($rc == -1)
		{
			print $fh "hung\t$db session $sid: a batch of " . scalar(@ns)
			  . " validations did not finish in ${batch_timeout}s\n";
			$worst = $batch_timeout * 1000;
			last;
		}
		my ($ok, $w, $s) = $rc == 0 ? batch_result(\@ns, $out) : (0);
		if (!$ok)
		{
			print $fh "error\t$db session $sid: exit $rc, '$out', $err\n";
			last;
		}
		$count{$_}++ for @ns;
		$batches++;
		$worst = $w if $w > $worst;
		$slow += $s;
		$pos = $last + 1;
		if ($pos > $#order)
		{
			$pos = 0;
			$passes++;
		}
		usleep(50_000);
	}
	print $fh "count\t$db\t$_\t$count{$_}\n" for sort { $a <=> $b } keys %count;
	print $fh "stat\t$db\t$sid\t$batches\t$worst\t$slow\t$refused\t$passes\n";
	return;
}

# ---- the chaos -------------------------------------------------------------

our $CHAOS_FH;    # the chaos process's output

# event(FH, KIND, OK, DETAIL) -- one chaos outcome, checked by the parent.
sub event
{
	my ($fh, $kind, $ok, $detail) = @_;
	$detail //= '';
	$detail =~ s/[\t\n]+/ /g;
	print $fh "event\t$kind\t" . ($ok ? 1 : 0) . "\t$detail\n";
	return;
}

# runs_ok(DB, SQL) -- true if SQL succeeded.
sub runs_ok
{
	my ($rc) = run_psql($_[0], [ $_[1] ]);
	return $rc == 0;
}

# value(DB, SQL) -- one value, or undef on error.
sub value
{
	my ($rc, $out) = run_psql($_[0], [ $_[1] ]);
	return $rc == 0 ? $out : undef;
}

# poll(SECONDS, CODE) -- calls CODE every 100 ms until it returns true;
# returns the seconds it took, or undef.
sub poll
{
	my ($seconds, $code) = @_;
	my $t0 = time;
	while (time - $t0 <= $seconds)
	{
		return time - $t0 if $code->();
		usleep(100_000);
	}
	return undef;
}

sub worker_of
{
	return value('postgres',
		"SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'apikeys worker' AND datname = '$_[0]'"
	) // '';
}

sub launcher_pid
{
	return value('postgres',
		"SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'apikeys launcher'"
	) // '';
}

sub db_exists
{
	return value('postgres', "SELECT count(*) FROM pg_database WHERE datname = '$_[0]'") // '';
}

# mint(DB, N) -- N keys in DB's public.test_keys, every 10th revoked as in
# the main databases; true on success.
sub mint
{
	my ($db, $n) = @_;
	my ($rc) = run_psql($db, [
		qq{CREATE TABLE public.test_keys (n int PRIMARY KEY, id text NOT NULL, key text NOT NULL);
		   INSERT INTO public.test_keys SELECT g, k.id, k.key FROM generate_series(1, $n) g,
		     LATERAL apikeys.apikey_create(owner => 'scratch', name => 'k' || g) k;
		   SELECT apikeys.apikey_revoke(id) FROM public.test_keys WHERE n % 10 = 0} ]);
	return $rc == 0;
}

# validate_in(DB, NS) -- one validate_batch() call; true if it went right.
# Its worst validation goes to the chaos's output (a hung call as the time
# it was given).
sub validate_in
{
	my ($db, $ns) = @_;
	my ($rc, $out, $err) = run_psql($db,
		[ "SELECT public.validate_batch('{" . join(',', @$ns) . "}')" ],
		timeout => $batch_timeout);
	my ($ok, $w) = $rc == 0 ? batch_result($ns, $out) : (0, 0);
	print $CHAOS_FH "worst\t$db, chaos\t$w\n" if $ok;
	print $CHAOS_FH "hung\t$db: chaos's batch of " . scalar(@$ns) . " validations did not finish in ${batch_timeout}s\n"
	  if $rc == -1;
	return $ok;
}

# start_blocker(DB, NAME) -- a session connected to DB that sleeps until
# stop_blocker(NAME) terminates it; returns once it is connected.
sub start_blocker
{
	my ($db, $name) = @_;
	my ($in, $out, $err) = ('', '', '');
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr($db) . " application_name=$name",
			'-c', 'SELECT pg_sleep(60)' ],
		'<', \$in, '>', \$out, '2>', \$err, IPC::Run::timeout(90));
	poll(10, sub {
		(value('postgres', "SELECT count(*) FROM pg_stat_activity WHERE application_name = '$name'") // '') eq '1'
	});
	return $h;
}

sub stop_blocker
{
	my ($h, $name) = @_;
	run_psql('postgres', ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '$name'"]);
	eval { $h->finish; 1 } or $h->kill_kill;
	return;
}

# drop_3ms(DB, USER) -- DROP DATABASE with statement_timeout = 3ms; returns
# (exit code, stderr).
sub drop_3ms
{
	my ($db, $user) = @_;
	my ($rc, undef, $err) = run_psql('postgres', [ "SET statement_timeout = '3ms'", "DROP DATABASE $db" ],
		$user ? (user => $user) : ());
	return ($rc, $err);
}

# victim_state(DB) -- 'dropped', 'invalid' (a DROP interrupted halfway: it
# can only be dropped) or 'intact'.
sub victim_state
{
	my ($db) = @_;
	return 'dropped' if db_exists($db) eq '0';
	my $limit = value('postgres', "SELECT datconnlimit FROM pg_database WHERE datname = '$db'") // '';
	return $limit eq '-2' ? 'invalid' : 'intact';
}

sub has_worker { return worker_of($_[0]) =~ /^\d+$/; }

# drop_db(FH, DB) -- DROP DATABASE IF EXISTS, which must succeed, in less
# than the 30 s psql is given.
sub drop_db
{
	my ($fh, $db) = @_;
	my ($rc, undef, $err, $secs) = run_psql('postgres', ["DROP DATABASE IF EXISTS $db"]);
	event($fh, 'drop_counted_db', $rc == 0,
		sprintf('DROP DATABASE %s: %s after %.1fs %s', $db, $rc == -1 ? 'still running' : "exit $rc", $secs, $err));
	return;
}

sub chaos_cycle
{
	my ($fh, $i) = @_;
	my ($rc, $out, $err, $took);

	# (a) a scratch database with the extension and counted validations,
	# copied by CREATE DATABASE ... TEMPLATE, then both dropped
	my $s = "scratch_$i";
	my $made = runs_ok('postgres', "CREATE DATABASE $s")
	  && runs_ok($s, 'CREATE EXTENSION apikeys CASCADE')
	  && mint($s, 30);
	my $counted = $made && validate_in($s, [ 1 .. 30 ]) && validate_in($s, [ 1 .. 30 ]);
	event($fh, 'scratch', $made && $counted, "$s: created, 30 keys, 60 validations");
	($rc, $out, $err) = run_psql('postgres', ["CREATE DATABASE ${s}_copy TEMPLATE $s"]);
	event($fh, 'template_copy', $rc == 0, "$err");
	drop_db($fh, $_) for ("${s}_copy", $s);

	# (b) without the extension
	($rc, $out, $err) = run_psql('postgres', [ "CREATE DATABASE plain_$i", "DROP DATABASE plain_$i" ]);
	event($fh, 'plain_db', $rc == 0, $err);

	# (c) a victim database with the extension and counted validations
	my $v = "victim_$i";
	$made = runs_ok('postgres', "CREATE DATABASE $v")
	  && runs_ok($v, 'CREATE EXTENSION apikeys CASCADE')
	  && mint($v, 20);
	my %vcount;
	if ($made && validate_in($v, [ 1 .. 20 ]))
	{
		$vcount{$_}++ for 1 .. 20;
	}
	$took = poll(10, sub { has_worker($v) });
	event($fh, 'victim_worker', $made && defined $took, "$v has its worker");

	# With a session connected, DROP DATABASE waits up to 5 s for it to go
	# (after apikeys has stopped the worker): a 3 ms statement_timeout
	# always cancels it there or earlier, and the database stays intact.
	my $blocker = start_blocker($v, "blocker_$i");
	for my $try (1, 2)
	{
		my ($rc3, $err3) = drop_3ms($v);
		event($fh, 'timeout_drop', $rc3 != 0 && $err3 =~ /canceling statement due to statement timeout/,
			"$v, a session connected, try $try: $err3");
	}
	# a login role without privileges, on the victim and on a main database
	for my $target ($v, $cancel_db)
	{
		($rc, $out, $err) = run_psql('postgres', ["DROP DATABASE $target"], user => 'mallory');
		event($fh, 'unprivileged_drop', $rc != 0 && $err =~ /must be owner of database $target/,
			"mallory: DROP DATABASE $target: $err");
		my ($rc3, $err3) = drop_3ms($target, 'mallory');
		event($fh, 'unprivileged_drop', $rc3 != 0 && $err3 =~ /must be owner of database|statement timeout/,
			"mallory, 3 ms timeout: DROP DATABASE $target: $err3");
	}
	($rc, $out, $err) = run_psql('postgres', ["DROP DATABASE $v"]);
	event($fh, 'drop_while_connected', $rc != 0 && $err =~ /is being accessed by other users/, "$v: $err");
	stop_blocker($blocker, "blocker_$i");

	$took = poll(10, sub { has_worker($v) });
	event($fh, 'worker_back_after_failed_drop', defined $took,
		"$v: its worker after cancelled, refused and busy DROP DATABASE");
	if (validate_in($v, [ 1 .. 20 ]))
	{
		$vcount{$_}++ for 1 .. 20;
	}
	my $flushed = value($v, 'SELECT apikeys.flush_usage()') // 'error';
	my $got = value($v, q{SELECT string_agg(t.n || ':' || u.calls || '/' || u.rejected, ',' ORDER BY t.n)
		FROM apikeys.usage u JOIN public.test_keys t ON t.id = u.key_id}) // 'error';
	my $want = join(',', map { "$_:" . (revoked($_) ? "0/$vcount{$_}" : "$vcount{$_}/0") }
		  sort { $a <=> $b } keys %vcount);
	event($fh, 'victim_counts', $flushed eq 't' && $got eq $want,
		"$v: flush_usage() $flushed; usage $got, sent $want");

	($rc, $out, $err) = run_psql($v, ['DROP EXTENSION apikeys']);
	$took = poll(10, sub { worker_of($v) eq '' });
	event($fh, 'drop_extension', $rc == 0 && defined $took, "$v: worker gone after DROP EXTENSION $err");
	($rc, $out, $err) = run_psql($v, ['CREATE EXTENSION apikeys']);
	$took = poll(10, sub { has_worker($v) });
	event($fh, 'create_extension', $rc == 0 && defined $took, "$v: worker back after CREATE EXTENSION $err");

	# nobody connected: the 3 ms timeout may cancel DROP DATABASE anywhere,
	# even halfway, which PostgreSQL leaves as an invalid database
	my ($rc3, $err3) = drop_3ms($v);
	my $state = victim_state($v);
	event($fh, 'timeout_drop', $rc3 == 0 || $err3 =~ /canceling statement due to statement timeout/,
		"$v, nobody connected: $state $err3");
	if ($state eq 'intact')
	{
		$took = poll(10, sub { has_worker($v) });
		event($fh, 'worker_back_after_failed_drop', defined $took, "$v: its worker after a cancelled DROP");
	}
	else
	{
		$took = poll(10, sub { worker_of($v) eq '' });
		event($fh, 'no_worker_for_dropped', defined $took, "$v ($state) has no worker");
	}
	drop_db($fh, $v);

	# (d) ALLOW_CONNECTIONS false, then true, on a counted database, while a
	# session connected before keeps validating (and the others cannot connect)
	{
		my @ns = (401 .. 420);
		my @q = map { ("SELECT public.validate_batch('{" . join(',', @ns) . "}')", 'SELECT pg_sleep(0.3)') } 1 .. 25;
		my ($hin, $hout, $herr) = ('', '', '');
		my $held = IPC::Run::start(
			[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d',
				$node->connstr($allowconn_db) . ' application_name=chaos_held',
				map { ('-c', $_) } @q ],
			'<', \$hin, '>', \$hout, '2>', \$herr, IPC::Run::timeout(60));
		poll(10, sub {
			value('postgres', "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chaos_held'") eq '1'
		});
		my ($rc1, undef, $err1) = run_psql('postgres', ["ALTER DATABASE $allowconn_db ALLOW_CONNECTIONS false"]);
		usleep(5_500_000);    # longer than the launcher's scan interval
		my ($rc2, undef, $err2) = run_psql('postgres', ["ALTER DATABASE $allowconn_db ALLOW_CONNECTIONS true"]);
		my $held_ok = eval { $held->finish; 1 };
		$held->kill_kill unless $held_ok;
		my @lines = grep { /\S/ } split /\n/, $hout;
		my $good = grep { (batch_result(\@ns, $_))[0] } @lines;
		for my $l (@lines)
		{
			my ($ok, $w) = batch_result(\@ns, $l);
			print $fh "worst\t$allowconn_db, held session\t$w\n";
		}
		print $fh "hung\t$allowconn_db: the held session did not finish in 60s\n" unless $held_ok;
		# whatever completed counts, even if the session failed later
		for my $n (@ns)
		{
			print $fh "count\t$allowconn_db\t$n\t$good\n" if $good;
		}
		event($fh, 'allow_connections', $rc1 == 0 && $rc2 == 0 && $held_ok && $good == 25,
			"$allowconn_db: ALTER false/true: $err1 $err2; held session: $good of 25 batches $herr");
	}

	# (e) pg_cancel_backend: a launcher and a worker carry on
	my $l = launcher_pid();
	my $w = worker_of($cancel_db);
	event($fh, 'cancel_launcher', 0, "no single launcher to cancel: '$l'") unless $l =~ /^\d+$/;
	event($fh, 'cancel_worker', 0, "$cancel_db has no single worker to cancel: '$w'") unless $w =~ /^\d+$/;
	if ($l =~ /^\d+$/)
	{
		run_psql('postgres', ["SELECT pg_cancel_backend($l)"]);
		usleep(1_000_000);
		event($fh, 'cancel_launcher', launcher_pid() eq $l, "launcher $l after pg_cancel_backend: " . launcher_pid());
	}
	if ($w =~ /^\d+$/)
	{
		run_psql('postgres', ["SELECT pg_cancel_backend($w)"]);
		usleep(1_000_000);
		event($fh, 'cancel_worker', worker_of($cancel_db) eq $w,
			"worker $w of $cancel_db after pg_cancel_backend: " . worker_of($cancel_db));
	}

	# (f) pg_terminate_backend: a worker, then the launcher (once there is one)
	poll(10, sub { launcher_pid() =~ /^\d+$/ });
	$w = worker_of($terminate_db);
	event($fh, 'terminate_worker', 0, "$terminate_db has no single worker to terminate: '$w'") unless $w =~ /^\d+$/;
	if ($w =~ /^\d+$/)
	{
		# the launcher replaces it before it is terminated in turn: with both
		# gone for the launcher's 5 s restart, validations in that database
		# could only wait
		($rc, $out) = run_psql('postgres', ["SELECT pg_terminate_backend($w)"]);
		$took = poll(10, sub { my $p = worker_of($terminate_db); $p =~ /^\d+$/ && $p ne $w });
		event($fh, 'terminate_worker', $rc == 0 && $out eq 't' && defined $took,
			sprintf('worker %s of %s replaced (%.1fs)', $w, $terminate_db, $took // -1));
	}
	$l = launcher_pid();
	event($fh, 'terminate_launcher', 0, "no single launcher to terminate: '$l'") unless $l =~ /^\d+$/;
	if ($l =~ /^\d+$/)
	{
		($rc, $out) = run_psql('postgres', ["SELECT pg_terminate_backend($l)"]);
		$took = poll(12, sub { my $p = launcher_pid(); $p =~ /^\d+$/ && $p ne $l });
		event($fh, 'terminate_launcher', $rc == 0 && defined $took,
			sprintf('a new launcher after pg_terminate_backend(%s) (%.1fs)', $l, $took // -1));
	}
	return;
}

sub note_line
{
	my ($fh, $text) = @_;
	print $fh "note\t$text\n";
	return;
}

sub chaos_main
{
	my ($fh) = @_;
	$CHAOS_FH = $fh;
	my $i = 0;
	while (1)
	{
		$i++;
		my $t0 = time;
		chaos_cycle($fh, $i);
		note_line($fh, sprintf('chaos cycle %d took %.1fs', $i, time - $t0));
		last if time > $load_end - 10 || time > $hard_stop;
	}
	print $fh "cycles\t$i\n";
	return;
}

my @children;
for my $db (@main_dbs)
{
	for my $sid (0, 1)
	{
		push @children, [ "session_${db}_$sid",
			spawn("session_${db}_$sid", sub { session_main($db, $sid, $_[0]) }) ];
	}
}
push @children, [ 'chaos', spawn('chaos', sub {
	eval { chaos_main($_[0]); 1 } or print { $_[0] } "error\tchaos died: $@\n";
	open my $f, '>', $chaos_done;
	close $f;
}) ];
note(sprintf('%d validating sessions and the chaos process started; load for at least %ds',
		scalar(@children) - 1, $load_s));

# wait for every child, for no longer than hard_stop + 2 minutes
my %exit;
my $deadline = $hard_stop + 120;
while (keys %exit < @children)
{
	for my $c (@children)
	{
		next if exists $exit{ $c->[0] };
		my $r = waitpid($c->[1], POSIX::WNOHANG());
		$exit{ $c->[0] } = $? >> 8 if $r == $c->[1];
	}
	last if time > $deadline;
	usleep(200_000);
}
for my $c (@children)
{
	next if exists $exit{ $c->[0] };
	kill 'KILL', $c->[1];
	waitpid($c->[1], 0);
	$exit{ $c->[0] } = 'killed';
}
note(sprintf('load and chaos done in %.1fs', time - $t_load));

# ---------------------------------------------------------------------------
# 2. What the children saw
# ---------------------------------------------------------------------------
my (@problems, %events, @stats, $cycles);
my $worst = 0;
my $worst_where = '';
my $validations = 0;
my %distinct;
for my $c (@children)
{
	my $name = $c->[0];
	my $text = -e "$dir/$name.out" ? slurp_file("$dir/$name.out") : '';
	push @problems, "$name: exit $exit{$name}" if $exit{$name} ne '0';
	push @problems, "$name: did not finish" unless $text =~ /^done$/m;
	for my $line (split /\n/, $text)
	{
		my @f = split /\t/, $line;
		if ($f[0] eq 'count')
		{
			$expect{ $f[1] }{ $f[2] } += $f[3];
		}
		elsif ($f[0] eq 'hung' || $f[0] eq 'error')
		{
			push @problems, "$name: $f[1]";
			($worst, $worst_where) = ($batch_timeout * 1000, "$name, hung") if $f[0] eq 'hung' && $worst < $batch_timeout * 1000;
		}
		elsif ($f[0] eq 'event')
		{
			push @{ $events{ $f[1] } }, [ $f[2], $f[3] ];
		}
		elsif ($f[0] eq 'stat')
		{
			my (undef, $db, $sid, $batches, $w, $slow, $refused, $passes) = @f;
			push @stats, "$db/$sid: $batches batches, $passes passes, worst ${w} ms, "
			  . "$slow validations >= 50 ms, $refused connections refused";
			($worst, $worst_where) = ($w, "$db session $sid") if $w > $worst;
		}
		elsif ($f[0] eq 'worst')
		{
			($worst, $worst_where) = ($f[2], $f[1]) if $f[2] > $worst;
		}
		elsif ($f[0] eq 'note')
		{
			note($f[1]);
		}
		elsif ($f[0] eq 'cycles')
		{
			$cycles = $f[1];
		}
	}
}
note($_) for @stats;
ok(!@problems, 'every session validated to the end: no validation hung, no error')
  or diag(join("\n", @problems));
for my $db (@main_dbs)
{
	for my $n (keys %{ $expect{$db} })
	{
		$validations += $expect{$db}{$n};
		$distinct{"$db/$n"} = 1;
	}
}
note("chaos cycles: " . ($cycles // 'none'));
ok(keys %distinct >= 20 * $max_tracked,
	sprintf('%d distinct keys validated (>= 20 x max_tracked_keys), %d validations in all',
		scalar keys %distinct, $validations));
ok($worst < $wait_limit_s * 1000,
	sprintf('the longest single validation took %.1f ms (%s): less than flush_interval + 3 s',
		$worst, $worst_where || 'none'));

my @kinds = (
	[ scratch => 'scratch databases with the extension and counted validations' ],
	[ template_copy => 'CREATE DATABASE ... TEMPLATE a scratch database with a worker' ],
	[ drop_counted_db => 'DROP DATABASE of databases with counted validations succeeds' ],
	[ plain_db => 'CREATE/DROP DATABASE without the extension' ],
	[ victim_worker => 'a new database with the extension gets its worker' ],
	[ timeout_drop => 'DROP DATABASE with statement_timeout = 3ms is cancelled' ],
	[ unprivileged_drop => 'DROP DATABASE by a role without privileges is refused' ],
	[ drop_while_connected => 'DROP DATABASE with a session connected is refused' ],
	[ worker_back_after_failed_drop => 'the worker is back after cancelled, refused and busy DROP DATABASE' ],
	[ victim_counts => 'counts exact in a database that survived its DROP DATABASE attempts' ],
	[ drop_extension => 'DROP EXTENSION ends the worker' ],
	[ create_extension => 'CREATE EXTENSION starts the worker again' ],
	[ no_worker_for_dropped => 'no worker for a database a cancelled DROP dropped or left invalid', 'optional' ],
	[ allow_connections => 'ALLOW_CONNECTIONS false/true while a connected session validates' ],
	[ cancel_launcher => 'the launcher survives pg_cancel_backend' ],
	[ cancel_worker => 'a worker survives pg_cancel_backend' ],
	[ terminate_worker => 'a new worker after pg_terminate_backend of one' ],
	[ terminate_launcher => 'a new launcher after pg_terminate_backend' ]);
for my $k (@kinds)
{
	my ($kind, $what, $optional) = @$k;
	my @ev = @{ $events{$kind} // [] };
	my @bad = grep { !$_->[0] } @ev;
	if (!@ev && $optional)
	{
		pass("chaos: $what (did not happen)");
		next;
	}
	ok(@ev && !@bad, sprintf('chaos: %s (%d of %d)', $what, @ev - @bad, scalar @ev))
	  or diag(join("\n", map { $_->[1] } (@ev ? @bad : ([ 0, 'never happened' ]))));
}

# ---------------------------------------------------------------------------
# 3. Workers settle: one per database with the extension, no duplicates
# ---------------------------------------------------------------------------
my $want_workers = join(',', @main_dbs);
my $settle = wait_until($node, 'postgres',
	q{SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys launcher') || ' '
	      || (SELECT coalesce(string_agg(datname, ',' ORDER BY datname), '') FROM pg_stat_activity
	           WHERE backend_type = 'apikeys worker')},
	"1 $want_workers", 20);
ok(defined $settle,
	sprintf('the launcher runs, and exactly one worker each for %s, none for dropped databases (%.1fs)',
		$want_workers, $settle // -1));
my $quiet_from = -s $node->logfile;
usleep(6_000_000);
my $quiet = slurp_file($node->logfile, $quiet_from);
my @starts = $quiet =~ /starting background worker process "(apikeys worker for database \S+)"/g;
is(scalar @starts, 0, 'no worker started during 6 quiet seconds (no duplicate workers)')
  or diag(join("\n", @starts));
my %started;
my $whole_log = slurp_file($node->logfile);
$started{$1}++ while $whole_log =~ /starting background worker process "apikeys worker for database (\S+)"/g;
note('workers started during the test: '
	  . join(', ', map { "$_ $started{$_}" } sort keys %started));
is(sql($node, 'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'apikeys worker'
		   AND datid NOT IN (SELECT oid FROM pg_database)}), '0', 'no worker of a database that is gone');

# ---------------------------------------------------------------------------
# 4. Every count, exactly
# ---------------------------------------------------------------------------
for my $db (@main_dbs)
{
	flush_usage($node, $db);
	my $u = usage_of($node, $db);
	my %want;
	for my $n (keys %{ $expect{$db} })
	{
		my $times = $expect{$db}{$n};
		$want{ $ids{$db}[$n] } = revoked($n) ? [ 0, $times ] : [ $times, 0 ];
	}
	my @wrong = map { sprintf('%s: usage %s, sent %s', $_, join('/', @{ $u->{$_} // [ 'none', 'none' ] }),
			join('/', @{ $want{$_} // [ 'none', 'none' ] })) }
	  grep {
		!$u->{$_} || !$want{$_}
		  || $u->{$_}[0] != $want{$_}[0] || $u->{$_}[1] != $want{$_}[1]
	  } sort(keys %{ { %$u, %want } });
	my ($c, $r) = (0, 0);
	$c += $_->[0], $r += $_->[1] for values %want;
	ok(!@wrong, sprintf('%s: every key has exactly its calls and rejected (%d keys, %d calls, %d rejected)',
			$db, scalar keys %want, $c, $r))
	  or diag(scalar(@wrong) . " keys wrong:\n" . join("\n", @wrong[ 0 .. ($#wrong < 19 ? $#wrong : 19) ]));
}

check_no_crash($node);
$node->stop;
done_testing();
