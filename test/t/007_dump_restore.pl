# 007_dump_restore.pl -- pg_dump / pg_restore into a new database keeps
# every key, revocation, rotation, scope, audit event and usage row, and the
# restored database is a working apikeys database of its own (README,
# "Backup and restore": keys, usage, audit events, added scopes and edits
# to the shipped scopes are dumped).
#
# Source database 'src': keys of four owners (plain, IP lists and metadata,
# read-only, a custom scope added by INSERT, expiring, expired and marked by
# the worker, revoked, rotated with and without grace, rotation chains),
# usage from validations (flushed) and rows inserted for past days, and the
# audit events all of that wrote. `pg_dump -Fc`, then `createdb` and
# `pg_restore -d` into 'restored', and `pg_restore -j 2` into 'restored_j'
# (parallel restore schedules table data by dependencies, not in the
# archive's order; whether it gets them wrong can depend on timing, so four
# more parallel restores, into restored_j2..5, are checked as well).
#
#   - pg_dump and pg_restore (serial and parallel) succeed and print nothing
#     (no error, no warning)
#   - every key validates in 'restored' exactly as in the source: the same
#     code and key_id for every key x permission x address in a matrix
#     (plaintexts are held by the test); revoked keys stay revoked (revoking
#     again says false, rotating is refused)
#   - in 'restored' and 'restored_j': apikeys.keys (every column,
#     rotated_from links included), apikeys.scopes (the custom scope with its
#     permissions, the shipped four not duplicated), apikeys.audit and
#     apikeys.usage are identical, row for row; apikey_list, apikey_usage and
#     apikey_analytics answer identically for every owner (restored_j2..5:
#     apikeys.keys identical)
#   - each restored database gets its own worker, and its counts go to its
#     own tables only (the source and the other copy do not grow)
#   - new audit events get ids above every restored one (the sequence came
#     along): creating and rotating a key in the restored database works
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use ApikeysTAP;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = new_node('dump_restore',
	"apikeys.flush_interval = '300ms'", 'apikeys.expiry_interval = 1');
my $src = 'src';
sql($node, 'postgres', "CREATE DATABASE $src");
create_extension($node, $src);
ok(defined wait_for_worker($node, $src, 10), 'the source database gets its worker');

# ---------------------------------------------------------------------------
# 1. The source database
# ---------------------------------------------------------------------------
sql($node, $src, q{
	INSERT INTO apikeys.scopes (name, permissions, description) VALUES
		('billing-admin', '{billing:*,lists:read}', 'Billing, and reading lists'),
		('unused', '{reports:read}', NULL);
	-- an edited shipped scope must come back edited (issue 12)
	UPDATE apikeys.scopes SET permissions = '{*:read,audit:export}',
	       description = 'Reading, and exporting audit'
	 WHERE name = 'read-only'});

my %k;    # label => { id, key }; plaintexts live here only
sub mint
{
	my ($label, $owner, $extra) = @_;
	($k{$label}{id}, $k{$label}{key}) = create_key($node, $src, $owner, "key $label", $extra);
}
sub rotate
{
	my ($old, $new, $grace) = @_;
	my $out = sql($node, $src,
		"SELECT id || ' ' || key FROM apikeys.apikey_rotate(id => '$k{$old}{id}', grace => '$grace')");
	($k{$new}{id}, $k{$new}{key}) = split / /, $out;
	die "apikey_rotate returned '$out'" unless defined $k{$new}{key} && $k{$new}{id} =~ /^key_/;
}

mint('a_full', 'alice');
mint('a_ip', 'alice',
	q{ip_restrictions => '{10.0.0.0/8,192.168.1.0/24}', metadata => '{"env": "prod", "tier": 2}'});
mint('a_ro', 'alice', "scope => 'read-only'");
mint('a_custom', 'alice', q{scope => 'billing-admin', metadata => '{"team": "billing"}'});
mint('a_exp30', 'alice', "expires_in_days => 30, prefix => 'acme_live'");
mint('a_expired', 'alice', 'expires_in_days => 1');
mint('b_revoked', 'bob');
mint('b_rot_old', 'bob', "scope => 'lists', metadata => '{\"v\": 1}'");
rotate('b_rot_old', 'b_rot_new', '1 day');
mint('b_rot0_old', 'bob', 'expires_in_days => 90');
rotate('b_rot0_old', 'b_rot0_new', '0');
mint('b_chain1', 'bob');
rotate('b_chain1', 'b_chain2', '2 days');
sql($node, $src, "SELECT apikeys.apikey_revoke('$k{b_chain2}{id}')");
mint('c1', 'carol', "ip_restrictions => '{2001:db8::/32}', scope => 'verify'");
rotate('c1', 'c2', '3 days');
rotate('c2', 'c3', '0');
mint('d_custom', 'dave', "scope => 'billing-admin', prefix => 'dv'");
is(sql($node, $src, "SELECT apikeys.apikey_revoke('$k{b_revoked}{id}')"), 't', 'b_revoked revoked');
sql($node, $src,
	"UPDATE apikeys.keys SET expires_at = now() - interval '1 minute' WHERE id = '$k{a_expired}{id}'");
# a well-formed key that exists nowhere (minted in a rolled-back transaction)
my $nowhere = sql($node, $src, q{
	BEGIN;
	SELECT key FROM apikeys.apikey_create(owner => 'nobody', name => 'rolled back');
	ROLLBACK;});
my @owners = qw(alice bob carol dave);

# the worker marks the expired keys (a_expired, b_rot0_old, c2) and writes
# their 'expired' events before the dump, so that nothing is left for the
# restored database's worker to do
my $took = wait_until($node, $src, q{
	SELECT count(*) FROM apikeys.keys
	 WHERE expires_at <= now() AND expired_at IS NULL AND revoked_at IS NULL}, '0', 15);
ok(defined $took, sprintf('the worker marked the expired keys in the source (%.2fs)', $took // -1));
is(sql($node, $src, "SELECT count(*) FROM apikeys.audit WHERE event = 'expired'"), '3',
	'three expired events (a_expired, b_rot0_old, c2)');

# The validation matrix: every key (and two unknown ones) x permissions x
# addresses; each line "label|permission|address|code|key_id".
my @labels = sort keys %k;
my $matrix_sql = 'SELECT string_agg(format(\'%s|%s|%s|%s|%s\', l, coalesce(p, \'-\'), coalesce(host(ip), \'-\'),'
  . ' (v).code, coalesce((v).key_id, \'-\')), E\'\n\' ORDER BY l, p NULLS FIRST, ip NULLS FIRST)'
  . ' FROM (SELECT l, p, ip, apikeys.apikey_validate(key, p, ip) AS v FROM (VALUES '
  . join(', ', (map { "('$_', '$k{$_}{key}')" } @labels),
	"('zz_not_found', '$nowhere')", "('zz_malformed', 'ak_nope')")
  . ') AS keys(l, key) CROSS JOIN (VALUES (NULL, NULL::inet), (\'lists:read\', NULL), (\'lists:write\', NULL),'
  . ' (\'billing:write\', NULL), (\'verify:check\', NULL), (NULL, \'10.1.2.3\'), (NULL, \'192.0.2.1\'),'
  . ' (NULL, \'2001:db8::1\'), (\'verify:check\', \'2001:db8::1\')) AS cases(p, ip)) s';
my $n_cases = 9;


my $src_matrix = sql($node, $src, $matrix_sql);
is(scalar(split /\n/, $src_matrix), (@labels + 2) * $n_cases,
	'the validation matrix has a line for every key x case');
# the matrix covers every outcome: spot checks in the source
my %spot = (
	'a_full|-|-' => 'valid', 'a_ip|-|-' => 'ip_not_allowed', 'a_ip|-|10.1.2.3' => 'valid',
	'a_ip|-|192.0.2.1' => 'ip_not_allowed', 'a_ro|lists:write|-' => 'insufficient_scope',
	'a_ro|lists:read|-' => 'valid', 'a_custom|billing:write|-' => 'valid',
	'a_custom|lists:write|-' => 'insufficient_scope', 'a_expired|-|-' => 'expired',
	'b_revoked|-|-' => 'revoked', 'b_rot_old|lists:write|-' => 'valid',
	'b_rot_new|lists:write|-' => 'valid', 'b_rot0_old|-|-' => 'expired', 'b_rot0_new|-|-' => 'valid',
	'b_chain1|-|-' => 'valid', 'b_chain2|-|-' => 'revoked', 'c1|verify:check|2001:db8::1' => 'valid',
	'c1|-|10.1.2.3' => 'ip_not_allowed', 'c2|-|2001:db8::1' => 'expired', 'c3|verify:check|2001:db8::1' => 'valid',
	'd_custom|billing:write|-' => 'valid', 'zz_not_found|-|-' => 'not_found', 'zz_malformed|-|-' => 'malformed');
my @bad_spots = grep { code_of($src_matrix, split(/\|/, $_)) ne $spot{$_} } sort keys %spot;
is(join(',', @bad_spots), '', 'the source answers the matrix as designed (' . scalar(keys %spot) . ' spot checks)');

# usage: the matrix, more validations, all flushed; and rows for past days
is(validate_n($node, $src, $k{a_full}{key}, 17), 'valid', '17 more calls of a_full');
is(validate_n($node, $src, $k{a_ro}{key}, 5, 'lists:write'), 'insufficient_scope', '5 refused calls of a_ro');
flush_usage($node, $src);
my $today = utc_today($node);
sql($node, $src, qq{INSERT INTO apikeys.usage (key_id, day, calls, rejected) VALUES
	('$k{a_full}{id}', '$today'::date - 5, 100, 3),
	('$k{a_full}{id}', '$today'::date - 40, 7, 0),
	('$k{a_full}{id}', '$today'::date - 200, 1, 1),
	('$k{b_revoked}{id}', '$today'::date - 3, 50, 9),
	('$k{c1}{id}', '$today'::date - 1, 12, 0)});
is(sql($node, $src, 'SELECT count(*) FROM apikeys.keys WHERE last_used_at IS NOT NULL') > 0 ? 1 : 0,
	1, 'flushes set last_used_at');

# ---------------------------------------------------------------------------
# 2. What the source holds, as text
# ---------------------------------------------------------------------------
my %state_sql = (
	'apikeys.keys' => q{SELECT string_agg(k::text, E'\n' ORDER BY id) FROM apikeys.keys k},
	'apikeys.scopes' => q{SELECT string_agg(s::text, E'\n' ORDER BY name) FROM apikeys.scopes s},
	'apikeys.audit' => q{SELECT string_agg(a::text, E'\n' ORDER BY event_id) FROM apikeys.audit a},
	'apikeys.usage' => q{SELECT string_agg(u::text, E'\n' ORDER BY key_id, day) FROM apikeys.usage u},
	'rotated_from links' => q{SELECT string_agg(id || ' <- ' || rotated_from, E'\n' ORDER BY id)
	                            FROM apikeys.keys WHERE rotated_from IS NOT NULL},
);
for my $o (@owners)
{
	$state_sql{"apikey_list('$o')"} =
	  "SELECT string_agg(l::text, E'\\n') FROM apikeys.apikey_list('$o') l";
	$state_sql{"apikey_usage('$o', 90)"} =
	  "SELECT string_agg(u::text, E'\\n') FROM apikeys.apikey_usage('$o', 90) u";
	$state_sql{"apikey_analytics('$o', 90)"} = "SELECT apikeys.apikey_analytics('$o', 90)";
}
sub state_of
{
	my ($db) = @_;
	return { map { $_ => sql($node, $db, $state_sql{$_}) } keys %state_sql };
}
my $src_state = state_of($src);
is(scalar(split /\n/, $src_state->{'rotated_from links'}), 5, 'the source has 5 rotation links');
is(scalar(split /\n/, $src_state->{'apikeys.scopes'}), 6, 'the source has 6 scopes');
my ($src_max_event, $src_events) = split /\|/,
  sql($node, $src, q{SELECT max(event_id) || '|' || count(*) FROM apikeys.audit});
note("source: $src_events audit events, "
	  . scalar(split /\n/, $src_state->{'apikeys.usage'}) . ' usage rows, '
	  . scalar(@labels) . ' keys');

# compare DB LABEL: every piece of state equal to the source's; on a
# difference, show the first differing lines (ids, digests, counts: no key)
sub same_state
{
	my ($db, $want, $label) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $got = state_of($db);
	for my $what (sort keys %$want)
	{
		my @w = split /\n/, $want->{$what};
		my @g = split /\n/, $got->{$what};
		my @diff;
		for my $i (0 .. ($#w > $#g ? $#w : $#g))
		{
			my ($a, $b) = ($w[$i] // '(none)', $g[$i] // '(none)');
			next if $a eq $b;
			# show 150 characters from a little before the first difference
			my $p = 0;
			$p++ while $p < length($a) && $p < length($b) && substr($a, $p, 1) eq substr($b, $p, 1);
			my $from = $p > 40 ? $p - 40 : 0;
			my $cut = sub { my $t = substr($_[0], $from, 150); ($from ? '...' : '') . $t . (length($_[0]) > $from + 150 ? '...' : '') };
			push @diff, sprintf("  line %d, from character %d\n    want: %s\n    got:  %s", $i, $from, $cut->($a), $cut->($b));
		}
		ok(!@diff, "$db: $what is identical$label (" . scalar(@w) . ' lines)')
		  or diag(join("\n", (@diff > 6 ? (@diff[0 .. 5], '  ...') : @diff),
			  sprintf('  (%d lines wanted, %d got, %d differ)', scalar @w, scalar @g, scalar @diff)));
	}
}

# ---------------------------------------------------------------------------
# 3. pg_dump -Fc, createdb, pg_restore
# ---------------------------------------------------------------------------
my $dump = $node->basedir . '/src.dump';
my @conn = ('-h', $node->host, '-p', $node->port);
sub run_cmd
{
	my ($name, @cmd) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my ($out, $err) = ('', '');
	my $t0 = time;
	my $ok = eval { IPC::Run::run(\@cmd, '>', \$out, '2>', \$err, IPC::Run::timeout(120)) } // 0;
	ok($ok, sprintf('%s succeeds (%.2fs)', $name, time - $t0)) or diag("exit status $?; $@");
	is($err, '', "... and prints no error or warning");
	return $ok;
}
run_cmd('pg_dump -Fc', 'pg_dump', '-Fc', '-f', $dump, @conn, $src);

my @restored = ('restored', 'restored_j');
run_cmd('createdb restored', 'createdb', @conn, 'restored');
run_cmd('pg_restore -d restored', 'pg_restore', @conn, '-d', 'restored', $dump);
run_cmd('createdb restored_j', 'createdb', @conn, 'restored_j');
run_cmd('pg_restore -j 2 -d restored_j', 'pg_restore', @conn, '-j', '2', '-d', 'restored_j', $dump);

# more parallel restores: each must succeed and bring every key back
for my $i (2 .. 5)
{
	my $db = "restored_j$i";
	run_cmd("createdb $db", 'createdb', @conn, $db);
	run_cmd("pg_restore -j 2 -d $db (attempt $i)", 'pg_restore', @conn, '-j', '2', '-d', $db, $dump);
	is(sql($node, $db, $state_sql{'apikeys.keys'}), $src_state->{'apikeys.keys'},
		"$db: apikeys.keys is identical (" . scalar(split /\n/, $src_state->{'apikeys.keys'}) . ' keys)');
	sql($node, 'postgres', "DROP DATABASE $db");
}

for my $db (@restored)
{
	is(sql($node, $db, "SELECT extversion FROM pg_extension WHERE extname = 'apikeys'"),
		sql($node, $db, "SELECT default_version FROM pg_available_extensions WHERE name = 'apikeys'"),
		"$db: the extension was created by the restore");
	same_state($db, $src_state, '');
	is(sql($node, $db, q{SELECT string_agg(name, ',' ORDER BY name) FROM apikeys.scopes
	                      WHERE name IN ('full', 'verify', 'lists', 'read-only')}),
		'full,lists,read-only,verify', "$db: the four shipped scopes, once each");
	is(sql($node, $db, q{SELECT permissions::text || ' ' || description FROM apikeys.scopes WHERE name = 'billing-admin'}),
		'{billing:*,lists:read} Billing, and reading lists', "$db: the added scope has its permissions");
	is(sql($node, $db, q{SELECT permissions::text || ' ' || description FROM apikeys.scopes WHERE name = 'read-only'}),
		'{*:read,audit:export} Reading, and exporting audit', "$db: the edited shipped scope comes back edited");
	my $t0 = time;
	ok(defined wait_for_worker($node, $db, 15),
		sprintf('%s: gets its own worker (%.2fs)', $db, time - $t0));
}
is(sql($node, 'postgres', q{SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_stat_activity
                            WHERE backend_type = 'apikeys worker'}),
	'restored,restored_j,src', 'one worker per database with the extension');

# ---------------------------------------------------------------------------
# 4. Keys validate exactly as in the source
# ---------------------------------------------------------------------------
my $r_matrix = sql($node, 'restored', $matrix_sql);
my @w = split /\n/, $src_matrix;
my @g = split /\n/, $r_matrix;
my @diff = grep { ($w[$_] // '') ne ($g[$_] // '') } 0 .. $#w;
ok(!@diff && @g == @w,
	'restored: every key x permission x address gives the same code and key_id as in the source ('
	  . scalar(@w) . ' validations)')
  or diag(join("\n", map { "  want $w[$_]\n  got  " . ($g[$_] // '(none)') } @diff[0 .. ($#diff > 9 ? 9 : $#diff)]));
is(sql($node, 'restored', "SELECT apikeys.apikey_revoke('$k{b_revoked}{id}')"), 'f',
	'restored: revoking b_revoked again says it already was');
like(sql_fails($node, 'restored', "SELECT apikeys.apikey_rotate('$k{b_chain2}{id}')"),
	qr/is revoked and cannot be rotated/, 'restored: a revoked key cannot be rotated');

# ---------------------------------------------------------------------------
# 5. Counts go to the restored database's own tables only
# ---------------------------------------------------------------------------
flush_usage($node, $_) for ('restored', 'restored_j', $src);
my $grown = usage_of($node, $src);    # the baseline, from the dumped table
my $m = matrix_counts($r_matrix);
for my $id (keys %$m)
{
	$grown->{$id} //= [ 0, 0 ];
	$grown->{$id}[$_] += $m->{$id}[$_] for 0, 1;
}
is_deeply(usage_of($node, 'restored'), $grown,
	'restored: usage grew by exactly the validations made there');
is_deeply(usage_of($node, $src), usage_of($node, 'restored_j'),
	'the source and restored_j (no validations) are equal');
same_state($src, $src_state, ', in the source, after validations in the restored database');
same_state('restored_j', $src_state, ', after validations in the other restored database');

# ---------------------------------------------------------------------------
# 6. New events in the restored database
# ---------------------------------------------------------------------------
for my $db (@restored)
{
	my ($ret, $out, $err) = $node->psql($db,
		"SELECT id FROM apikeys.apikey_create(owner => 'erin', name => 'after restore')",
		timeout => 60);
	is($ret, 0, "$db: apikey_create works after the restore") or diag($err);
	my $new_id = $out;
	is(sql($node, $db, "SELECT min(event_id) > $src_max_event FROM apikeys.audit WHERE key_id = '$new_id'"),
		't', "$db: its created event has an id above every restored one ($src_max_event)");
	($ret, $out, $err) = $node->psql($db,
		"SELECT id FROM apikeys.apikey_rotate('$k{a_full}{id}', '1 hour')", timeout => 60);
	is($ret, 0, "$db: rotating a restored key works") or diag($err);
	is(sql($node, $db, qq{SELECT count(*) || '/' || count(DISTINCT event_id) || '/' || (max(event_id) > $src_max_event)::text
	                       FROM apikeys.audit}),
		($src_events + 3) . '/' . ($src_events + 3) . '/true',
		"$db: the audit trail is the restored events plus 3 new ones, ids unique");
}
is(sql($node, $src, 'SELECT max(event_id) FROM apikeys.audit'), $src_max_event,
	'the source audit trail did not change');

check_no_crash($node);
$node->stop;
done_testing();
