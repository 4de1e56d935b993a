# 011_upgrade.pl -- ALTER EXTENSION apikeys UPDATE from 0.1 gives the same
# extension as a fresh install of the newest version, and keeps every key,
# revocation, rotation, scope, usage row and audit event working (SPEC §10).
# The newest version is the control file's default_version, read from
# pg_available_extensions: nothing here names 0.2.
#
# Databases on one cluster:
#   upgraded  CREATE EXTENSION apikeys VERSION '0.1', filled as a user would
#             (keys of three owners, IP lists, expiry, metadata, a custom
#             prefix, a scope added by INSERT, revocations, rotations with
#             and without grace, validations of every outcome, flushed
#             usage, the audit events all of that wrote), then
#             ALTER EXTENSION apikeys UPDATE (to default_version)
#   fresh     CREATE EXTENSION apikeys (the newest version)
#   cycle     VERSION '0.1', UPDATE TO the newest, then DROP EXTENSION and
#             CREATE EXTENSION again
#   from_X_Y  every other installable version older than the newest (none
#             while 0.2 is the newest), installed and updated
#   other_su  VERSION '0.1' created by the bootstrap superuser, updated by
#             another superuser (a TODO test: see section 7)
#
#   - after the update, extversion is pg_available_extensions.default_version
#   - every object of the extension is the same in 'upgraded' and 'fresh':
#     one catalog query per category, run in both, whose outputs must be
#     identical (a unified diff is shown on failure; both outputs are also
#     written to catalog_fresh.txt and catalog_upgraded.txt in the node's
#     directory).  The query is generic: it enumerates the extension's
#     pg_depend members and everything in the schemas of the extension (its
#     own schema, member schemas and the schemas of members), so objects
#     added by later versions are compared without editing this test.
#     Categories: extension, config_dump (pg_extension_config_dump
#     registrations), members, schemas, functions (identity, arguments with
#     defaults, result, body, language, volatility, strictness, security,
#     leakproof, parallel, cost, rows, config, owner, ACL, initial ACL,
#     comment), relations (kind, persistence, owner, ACL, initial ACL,
#     options, RLS flags, replica identity, view definitions, comment),
#     columns (position among the live columns, so a column the update adds
#     must come last in the fresh install's CREATE TABLE as well; type with
#     typmod, not null, default, identity, generated, collation, storage,
#     ACL, comment), indexes, constraints, triggers (definition, enabled),
#     types (composite, enum, domain, range; owner, ACL, comment),
#     sequences (parameters and OWNED BY, not their values),
#     policies_rules (pg_policies, RLS flags, rules), event_triggers,
#     operators_other (operators, casts, operator classes and families,
#     aggregates, extended statistics, default privileges), comments (every
#     pg_description row of a non-system object), dependencies (every
#     pg_depend row of a non-system object, described).
#     ACLs are compared by meaning: sorted, and NULL read as the default it
#     stands for (acldefault); the raw ACLs are compared too and a
#     difference there is only reported (note), not failed.  Attribute
#     options named pg_attver (set on every column by this server build,
#     with a value that differs between databases) are left out.
#   - self-check: in 'fresh', inside a transaction that is rolled back, a
#     comment, a grant, a new index and a membership change make the
#     comparison report differences in exactly the expected categories
#   - the data survived the update: apikeys.keys, apikeys.scopes,
#     apikeys.audit, apikeys.usage and apikey_list/apikey_usage/
#     apikey_analytics of every owner are identical before and after;
#     every old key (and an unknown and a malformed one) validates with the
#     same outcome for every permission x address case as before
#   - after the update: flush_usage() adds exactly the new validations on
#     top of the old usage rows; analytics counts them; a new key can be
#     created, validated and revoked, its audit events get ids above the
#     old ones
#   - 'cycle': the update path, then DROP EXTENSION / CREATE EXTENSION,
#     compare equal to 'fresh' and work (create, validate, flush)
#
# Plaintext keys are kept in Perl variables only; nothing printed by this
# test (names, diagnostics, errors) contains one.
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

my $t_start = time;
my $node = new_node('upgrade', 'apikeys.expiry_interval = 1');

my $old_version = '0.1';
my $new_version = sql($node, 'postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'apikeys'");
like($new_version, qr/^\d+\.\d+$/, "the control file's default_version is $new_version");
isnt($new_version, $old_version, "default_version is newer than $old_version");
is(sql($node, 'postgres',
		"SELECT count(*) FROM pg_available_extension_versions WHERE name = 'apikeys' AND version = '$old_version'"),
	'1', "version $old_version is still installable");

# ---------------------------------------------------------------------------
# Keys: plaintexts live in %k only; whatever this test prints goes through
# redact() so that no key can reach the output.
# ---------------------------------------------------------------------------
my %k;    # label => { id, key, owner }
sub redact
{
	my ($text) = @_;
	for my $label (keys %k)
	{
		my $key = $k{$label}{key};
		$text =~ s/\Q$key\E/<key $label>/g if defined $key && length $key;
	}
	$text =~ s/\b[a-z0-9_]{1,32}_[0-9A-Za-z]{38,}\b/<key>/g;    # any key-shaped string
	return $text;
}
# ksql(DB, SQL): sql() for statements that hold keys; errors are redacted.
sub ksql
{
	my ($db, $query) = @_;
	my $out = eval { sql($node, $db, $query) };
	die redact($@) unless defined $out;
	return $out;
}
sub mint
{
	my ($db, $label, $owner, $extra) = @_;
	$extra = defined $extra ? ", $extra" : '';
	my $out = ksql($db,
		"SELECT id || ' ' || key FROM apikeys.apikey_create(owner => '$owner', name => 'key $label'$extra)");
	my ($id, $key) = split / /, $out;
	die "apikey_create for $label returned no key" unless defined $key && $id =~ /^key_/;
	$k{$label} = { id => $id, key => $key, owner => $owner };
	return;
}
# kvalidate(...): validate_n, with a failure's message redacted
sub kvalidate
{
	my @args = @_;
	my $codes = eval { validate_n(@args) };
	die redact($@) unless defined $codes;
	return $codes;
}
sub rotate
{
	my ($db, $old, $new, $grace) = @_;
	my $out = ksql($db,
		"SELECT id || ' ' || key FROM apikeys.apikey_rotate(id => '$k{$old}{id}', grace => '$grace')");
	my ($id, $key) = split / /, $out;
	die "apikey_rotate of $old returned no key" unless defined $key && $id =~ /^key_/;
	$k{$new} = { id => $id, key => $key, owner => $k{$old}{owner} };
	return;
}

# ---------------------------------------------------------------------------
# The catalog comparison.  catalog_of(DB, [BEFORE]) runs one psql session
# (BEFORE, e.g. "BEGIN; ...", first; ROLLBACK after, if BEFORE begins a
# transaction) and returns { category => text }.
# ---------------------------------------------------------------------------

# The objects to compare: the extension's pg_depend members, and everything
# in its schemas (the extension's schema, member schemas, schemas of members).
my $cte = q{
WITH ext AS (SELECT e.oid, e.extnamespace FROM pg_extension e WHERE e.extname = 'apikeys'),
mem AS (SELECT d.classid, d.objid, d.objsubid FROM pg_depend d JOIN ext ON d.refobjid = ext.oid
         WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'),
nsp AS (SELECT n.oid, n.nspname FROM pg_namespace n
         WHERE n.oid IN (SELECT extnamespace FROM ext)
            OR n.oid IN (SELECT objid FROM mem WHERE classid = 'pg_namespace'::regclass)
            OR n.nspname IN (SELECT (pg_identify_object(classid, objid, 0)).schema FROM mem)),
rels AS (SELECT c.*, format('%I.%I', n.nspname, c.relname) AS ident
           FROM pg_class c JOIN nsp n ON n.oid = c.relnamespace
         UNION
         SELECT c.*, format('%I.%I', n.nspname, c.relname)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid IN (SELECT objid FROM mem WHERE classid = 'pg_class'::regclass)),
procs AS (SELECT p.* FROM pg_proc p
           WHERE p.pronamespace IN (SELECT oid FROM nsp)
              OR p.oid IN (SELECT objid FROM mem WHERE classid = 'pg_proc'::regclass))
};

# An ACL as text by its meaning: NULL is the default it stands for, items sorted.
sub acl
{
	my ($col, $kind, $owner) = @_;
	$kind = "'$kind'" if $kind =~ /^\w$/;
	return "(SELECT coalesce(string_agg(x::text, ',' ORDER BY x::text), '')"
	  . " FROM unnest(coalesce($col, acldefault($kind, $owner))) AS x)";
}
# The raw ACL: sorted, NULL as NULL.
sub rawacl
{
	my ($col) = @_;
	return "coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest($col) AS x), 'NULL')";
}
# The initial ACL (pg_init_privs, what pg_dump compares against) by meaning.
sub initacl
{
	my ($class, $oid, $subid, $kind, $owner) = @_;
	return acl("(SELECT ip.initprivs FROM pg_init_privs ip WHERE ip.classoid = '$class'::regclass"
		  . " AND ip.objoid = $oid AND ip.objsubid = $subid)", $kind, $owner);
}
sub rawinitacl
{
	my ($class, $oid, $subid) = @_;
	return rawacl("(SELECT ip.initprivs FROM pg_init_privs ip WHERE ip.classoid = '$class'::regclass"
		  . " AND ip.objoid = $oid AND ip.objsubid = $subid)");
}

# Each category: rows (sortkey, line); lines joined in sortkey order.
my %category = (
	extension => q{
		SELECT e.extname, format('%s: owner=%s schema=%s relocatable=%s version=%s requires=[%s]',
			e.extname, e.extowner::regrole, e.extnamespace::regnamespace, e.extrelocatable,
			e.extversion,
			(SELECT string_agg(r.extname, ',' ORDER BY r.extname) FROM pg_depend d
			   JOIN pg_extension r ON r.oid = d.refobjid
			  WHERE d.classid = 'pg_extension'::regclass AND d.objid = e.oid
			    AND d.refclassid = 'pg_extension'::regclass))
		  FROM pg_extension e JOIN ext ON ext.oid = e.oid},
	config_dump => q{
		SELECT cfg::regclass::text, format('%s: condition=%s', cfg::regclass, quote_nullable(cond))
		  FROM pg_extension e JOIN ext ON ext.oid = e.oid,
		       unnest(e.extconfig, e.extcondition) AS u(cfg, cond)},
	members => q{
		SELECT pg_describe_object(classid, objid, objsubid), pg_describe_object(classid, objid, objsubid)
		  FROM mem},
	schemas => q{
		SELECT n.nspname, format('%s: owner=%s acl=[%s] initacl=[%s] member=%s comment=%s',
			n.nspname, s.nspowner::regrole, } . acl('s.nspacl', 'n', 's.nspowner') . ', '
	  . initacl('pg_namespace', 's.oid', 0, 'n', 's.nspowner') . q{,
			s.oid IN (SELECT objid FROM mem WHERE classid = 'pg_namespace'::regclass),
			quote_nullable(obj_description(s.oid, 'pg_namespace')))
		  FROM nsp n JOIN pg_namespace s ON s.oid = n.oid},
	# three lines per function (what it is, how it behaves, who may run it),
	# then its body line by line
	functions => q{
		SELECT p.oid::regprocedure::text || ' 1',
			format('%s: kind=%s language=%s identity_args=(%s) args=(%s) result=%s retset=%s bin=%s',
				p.oid::regprocedure, p.prokind, l.lanname, pg_get_function_identity_arguments(p.oid),
				pg_get_function_arguments(p.oid), pg_get_function_result(p.oid), p.proretset,
				quote_nullable(p.probin))
		  FROM procs p JOIN pg_language l ON l.oid = p.prolang
		UNION ALL
		SELECT p.oid::regprocedure::text || ' 2',
			format('%s: volatile=%s strict=%s security_definer=%s leakproof=%s parallel=%s cost=%s rows=%s'
				' config=%s support=%s',
				p.oid::regprocedure, p.provolatile, p.proisstrict, p.prosecdef, p.proleakproof,
				p.proparallel, p.procost, p.prorows, p.proconfig, p.prosupport::regproc)
		  FROM procs p
		UNION ALL
		SELECT p.oid::regprocedure::text || ' 3',
			format('%s: owner=%s acl=[%s] initacl=[%s] comment=%s',
				p.oid::regprocedure, p.proowner::regrole, } . acl('p.proacl', 'f', 'p.proowner') . ', '
	  . initacl('pg_proc', 'p.oid', 0, 'f', 'p.proowner') . q{,
				quote_nullable(obj_description(p.oid, 'pg_proc')))
		  FROM procs p
		UNION ALL
		SELECT p.oid::regprocedure::text || ' 4 ' || to_char(b.n, 'FM000000'),
		       format('%s body| %s', p.oid::regprocedure, b.line)
		  FROM procs p, regexp_split_to_table(p.prosrc, E'\n') WITH ORDINALITY AS b(line, n)},
	relations => q{
		SELECT c.ident, format('%s: kind=%s persistence=%s owner=%s am=%s acl=[%s] initacl=[%s]'
				' options=%s rls=%s force_rls=%s replica_identity=%s partition=%s partkey=%s'
				' of_type=%s comment=%s',
			c.ident, c.relkind, c.relpersistence, c.relowner::regrole,
			(SELECT amname FROM pg_am WHERE oid = c.relam),
			CASE WHEN c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') THEN }
	  . acl('c.relacl', q{(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char"}, 'c.relowner')
	  . q{ END, CASE WHEN c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') THEN }
	  . initacl('pg_class', 'c.oid', 0, q{(CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char"}, 'c.relowner')
	  . q{ END,
			c.reloptions, c.relrowsecurity, c.relforcerowsecurity, c.relreplident, c.relispartition,
			pg_get_partkeydef(c.oid), nullif(c.reloftype, 0)::regtype,
			quote_nullable(obj_description(c.oid, 'pg_class')))
		  FROM rels c
		UNION ALL
		SELECT c.ident || ' ' || to_char(v.n, 'FM000000'), format('%s view| %s', c.ident, v.line)
		  FROM rels c, regexp_split_to_table(pg_get_viewdef(c.oid, true), E'\n') WITH ORDINALITY AS v(line, n)
		 WHERE c.relkind IN ('v', 'm')},
	columns => q{
		SELECT c.ident || ' ' || to_char(a.pos, 'FM000000'),
			format('%s.%I: position=%s type=%s not_null=%s default=%s identity=%s generated=%s'
				' collation=%s storage=%s compression=%s statistics=%s options=%s acl=[%s] initacl=[%s]'
				' comment=%s',
				c.ident, a.attname, a.pos, format_type(a.atttypid, a.atttypmod), a.attnotnull,
				quote_nullable(pg_get_expr(ad.adbin, ad.adrelid)), a.attidentity, a.attgenerated,
				CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END,
				a.attstorage, a.attcompression, a.attstattarget,
				(SELECT array_agg(o ORDER BY o) FROM unnest(a.attoptions) AS o WHERE o !~ '^pg_attver='),
				} . acl('a.attacl', 'c', 'c.relowner') . ', '
	  . initacl('pg_class', 'c.oid', 'a.attnum', 'c', 'c.relowner') . q{,
				quote_nullable(col_description(c.oid, a.attnum)))
		  FROM rels c
		  JOIN (SELECT at.*, row_number() OVER (PARTITION BY at.attrelid ORDER BY at.attnum) AS pos
		          FROM pg_attribute at WHERE at.attnum > 0 AND NOT at.attisdropped) a
		    ON a.attrelid = c.oid
		  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
		 WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')},
	indexes => q{
		SELECT i.indexrelid::regclass::text,
			format('%s on %s: %s primary=%s unique=%s clustered=%s replica_identity=%s immediate=%s valid=%s comment=%s',
				i.indexrelid::regclass, i.indrelid::regclass, pg_get_indexdef(i.indexrelid),
				i.indisprimary, i.indisunique, i.indisclustered, i.indisreplident, i.indimmediate,
				i.indisvalid, quote_nullable(obj_description(i.indexrelid, 'pg_class')))
		  FROM pg_index i
		 WHERE i.indrelid IN (SELECT oid FROM rels) OR i.indexrelid IN (SELECT oid FROM rels)},
	constraints => q{
		SELECT coalesce(nullif(co.conrelid, 0)::regclass::text, co.contypid::regtype::text) || ' ' || co.conname,
			format('%s on %s: type=%s definition=%s deferrable=%s deferred=%s validated=%s no_inherit=%s'
				' index=%s comment=%s',
				co.conname, coalesce(nullif(co.conrelid, 0)::regclass::text, co.contypid::regtype::text),
				co.contype, pg_get_constraintdef(co.oid, true), co.condeferrable, co.condeferred,
				co.convalidated, co.connoinherit, nullif(co.conindid, 0)::regclass,
				quote_nullable(obj_description(co.oid, 'pg_constraint')))
		  FROM pg_constraint co
		 WHERE co.connamespace IN (SELECT oid FROM nsp) OR co.conrelid IN (SELECT oid FROM rels)},
	triggers => q{
		SELECT t.tgrelid::regclass::text || ' ' || t.tgname,
			format('%s on %s: %s enabled=%s comment=%s', t.tgname, t.tgrelid::regclass,
				pg_get_triggerdef(t.oid, true), t.tgenabled,
				quote_nullable(obj_description(t.oid, 'pg_trigger')))
		  FROM pg_trigger t
		 WHERE NOT t.tgisinternal AND t.tgrelid IN (SELECT oid FROM rels)},
	types => q{
		SELECT t.oid::regtype::text,
			format('%s: type=%s category=%s owner=%s acl=[%s] initacl=[%s] relkind=%s element=%s'
				' base=%s not_null=%s default=%s collation=%s attributes=[%s] enum=[%s] range=%s comment=%s',
				t.oid::regtype, t.typtype, t.typcategory, t.typowner::regrole,
				} . acl('t.typacl', 'T', 't.typowner') . ', '
	  . initacl('pg_type', 't.oid', 0, 'T', 't.typowner') . q{,
				(SELECT relkind FROM pg_class WHERE oid = t.typrelid),
				nullif(t.typelem, 0)::regtype,
				CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END,
				t.typnotnull, quote_nullable(t.typdefault),
				CASE WHEN t.typcollation <> 0 THEN t.typcollation::regcollation::text END,
				CASE WHEN t.typtype = 'c' THEN
					(SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)),
									   ', ' ORDER BY a.attnum)
					   FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped)
				END,
				(SELECT string_agg(quote_literal(e.enumlabel), ',' ORDER BY e.enumsortorder)
				   FROM pg_enum e WHERE e.enumtypid = t.oid),
				(SELECT format('subtype=%s opclass=%s canonical=%s subdiff=%s multirange=%s',
						r.rngsubtype::regtype, (SELECT opcname FROM pg_opclass WHERE oid = r.rngsubopc),
						r.rngcanonical::regproc, r.rngsubdiff::regproc, r.rngmultitypid::regtype)
				   FROM pg_range r WHERE r.rngtypid = t.oid),
				quote_nullable(obj_description(t.oid, 'pg_type')))
		  FROM pg_type t
		 WHERE t.typnamespace IN (SELECT oid FROM nsp)
		    OR t.oid IN (SELECT objid FROM mem WHERE classid = 'pg_type'::regclass)},
	sequences => q{
		SELECT format('%I.%I', s.schemaname, s.sequencename),
			format('%I.%I: owner=%s type=%s start=%s min=%s max=%s increment=%s cycle=%s cache=%s owned_by=%s',
				s.schemaname, s.sequencename, s.sequenceowner, s.data_type, s.start_value, s.min_value,
				s.max_value, s.increment_by, s.cycle, s.cache_size,
				(SELECT string_agg(format('%s.%I (%s)', d.refobjid::regclass, a.attname, d.deptype), ', ')
				   FROM pg_depend d
				   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
				  WHERE d.classid = 'pg_class'::regclass AND d.objid = format('%I.%I', s.schemaname, s.sequencename)::regclass
				    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
		  FROM pg_sequences s WHERE s.schemaname IN (SELECT nspname FROM nsp)},
	policies_rules => q{
		SELECT format('%I.%I policy %I', p.schemaname, p.tablename, p.policyname),
			format('%I.%I policy %I: %s for %s to %s using %s with check %s',
				p.schemaname, p.tablename, p.policyname, p.permissive, p.cmd, p.roles,
				quote_nullable(p.qual), quote_nullable(p.with_check))
		  FROM pg_policies p WHERE p.schemaname IN (SELECT nspname FROM nsp)
		UNION ALL
		SELECT c.ident, format('%s: row level security=%s forced=%s', c.ident, c.relrowsecurity, c.relforcerowsecurity)
		  FROM rels c WHERE c.relrowsecurity OR c.relforcerowsecurity
		UNION ALL
		SELECT format('%I.%I rule %I', r.schemaname, r.tablename, r.rulename),
			format('%I.%I rule %I: %s', r.schemaname, r.tablename, r.rulename, r.definition)
		  FROM pg_rules r WHERE r.schemaname IN (SELECT nspname FROM nsp)},
	event_triggers => q{
		SELECT et.evtname, format('%s: event=%s owner=%s function=%s enabled=%s tags=%s member=%s comment=%s',
			et.evtname, et.evtevent, et.evtowner::regrole, et.evtfoid::regprocedure, et.evtenabled,
			et.evttags, et.oid IN (SELECT objid FROM mem WHERE classid = 'pg_event_trigger'::regclass),
			quote_nullable(obj_description(et.oid, 'pg_event_trigger')))
		  FROM pg_event_trigger et},
	operators_other => q{
		SELECT 'operator ' || o.oid::regoperator::text,
			format('operator %s: owner=%s result=%s code=%s commutator=%s negator=%s restrict=%s join=%s'
				' merges=%s hashes=%s comment=%s',
				o.oid::regoperator, o.oprowner::regrole, o.oprresult::regtype, o.oprcode::regproc,
				nullif(o.oprcom, 0)::regoperator, nullif(o.oprnegate, 0)::regoperator, o.oprrest::regproc,
				o.oprjoin::regproc, o.oprcanmerge, o.oprcanhash,
				quote_nullable(obj_description(o.oid, 'pg_operator')))
		  FROM pg_operator o
		 WHERE o.oprnamespace IN (SELECT oid FROM nsp)
		    OR o.oid IN (SELECT objid FROM mem WHERE classid = 'pg_operator'::regclass)
		UNION ALL
		SELECT 'cast ' || c.castsource::regtype || ' ' || c.casttarget::regtype,
			format('cast (%s as %s): function=%s context=%s method=%s',
				c.castsource::regtype, c.casttarget::regtype, nullif(c.castfunc, 0)::regprocedure,
				c.castcontext, c.castmethod)
		  FROM pg_cast c
		 WHERE c.oid IN (SELECT objid FROM mem WHERE classid = 'pg_cast'::regclass)
		    OR c.castfunc IN (SELECT oid FROM procs)
		    OR (SELECT typnamespace FROM pg_type WHERE oid = c.castsource) IN (SELECT oid FROM nsp)
		    OR (SELECT typnamespace FROM pg_type WHERE oid = c.casttarget) IN (SELECT oid FROM nsp)
		UNION ALL
		SELECT 'opclass ' || n.nspname || '.' || oc.opcname,
			format('operator class %I.%I using %s: type=%s default=%s family=%s owner=%s',
				n.nspname, oc.opcname, (SELECT amname FROM pg_am WHERE oid = oc.opcmethod),
				oc.opcintype::regtype, oc.opcdefault,
				(SELECT opfname FROM pg_opfamily WHERE oid = oc.opcfamily), oc.opcowner::regrole)
		  FROM pg_opclass oc JOIN nsp n ON n.oid = oc.opcnamespace
		UNION ALL
		SELECT 'opfamily ' || n.nspname || '.' || f.opfname,
			format('operator family %I.%I using %s: owner=%s', n.nspname, f.opfname,
				(SELECT amname FROM pg_am WHERE oid = f.opfmethod), f.opfowner::regrole)
		  FROM pg_opfamily f JOIN nsp n ON n.oid = f.opfnamespace
		UNION ALL
		SELECT 'aggregate ' || a.aggfnoid::regprocedure,
			format('aggregate %s: kind=%s transition=%s final=%s combine=%s state=%s initial=%s',
				a.aggfnoid::regprocedure, a.aggkind, a.aggtransfn::regproc, a.aggfinalfn::regproc,
				a.aggcombinefn::regproc, a.aggtranstype::regtype, quote_nullable(a.agginitval))
		  FROM pg_aggregate a WHERE a.aggfnoid IN (SELECT oid FROM procs)
		UNION ALL
		SELECT 'statistics ' || n.nspname || '.' || s.stxname,
			format('statistics %I.%I: %s', n.nspname, s.stxname, pg_get_statisticsobjdef(s.oid))
		  FROM pg_statistic_ext s JOIN nsp n ON n.oid = s.stxnamespace
		UNION ALL
		SELECT format('default acl %s %s %s', da.defaclrole::regrole, da.defaclnamespace::regnamespace, da.defaclobjtype),
			format('default privileges of %s in schema %s on %s: %s', da.defaclrole::regrole,
				CASE WHEN da.defaclnamespace = 0 THEN '(all)' ELSE da.defaclnamespace::regnamespace::text END,
				da.defaclobjtype, } . rawacl('da.defaclacl') . q{)
		  FROM pg_default_acl da
		 WHERE da.defaclnamespace = 0 OR da.defaclnamespace IN (SELECT oid FROM nsp)},
	# every comment on a non-system object (the databases hold nothing else
	# than the extensions), whatever its kind
	comments => q{
		SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid),
			format('%s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
		  FROM pg_description d WHERE d.objoid >= 16384},
	# every dependency of a non-system object, described (OIDs in the names
	# of toast tables and foreign-key triggers left out)
	dependencies => q{
		SELECT x.line, x.line FROM (
			SELECT regexp_replace(format('%s -> %s (%s)',
					pg_describe_object(d.classid, d.objid, d.objsubid),
					pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid), d.deptype),
				'RI_ConstraintTrigger_([ac])_[0-9]+', 'RI_ConstraintTrigger_\1_*', 'g') AS line
			  FROM pg_depend d
			 WHERE d.objid >= 16384
			   AND pg_describe_object(d.classid, d.objid, d.objsubid) !~ 'pg_toast'
			   AND pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) !~ 'pg_toast') x},
);

# Raw ACLs (NULL kept apart from the default it means): reported, not failed.
my $raw_acls = q{
	SELECT 'schema ' || n.nspname, format('schema %s: acl=%s initacl=%s', n.nspname, }
  . rawacl('s.nspacl') . ', ' . rawinitacl('pg_namespace', 's.oid', 0) . q{)
	  FROM nsp n JOIN pg_namespace s ON s.oid = n.oid
	UNION ALL
	SELECT 'relation ' || c.ident, format('relation %s: acl=%s initacl=%s', c.ident, }
  . rawacl('c.relacl') . ', ' . rawinitacl('pg_class', 'c.oid', 0) . q{)
	  FROM rels c
	UNION ALL
	SELECT 'function ' || p.oid::regprocedure, format('function %s: acl=%s initacl=%s', p.oid::regprocedure, }
  . rawacl('p.proacl') . ', ' . rawinitacl('pg_proc', 'p.oid', 0) . q{)
	  FROM procs p
	UNION ALL
	SELECT 'type ' || t.oid::regtype, format('type %s: acl=%s initacl=%s', t.oid::regtype, }
  . rawacl('t.typacl') . ', ' . rawinitacl('pg_type', 't.oid', 0) . q{)
	  FROM pg_type t WHERE t.typnamespace IN (SELECT oid FROM nsp)
};

my @categories = sort keys %category;

# The whole comparison as one psql script: a marker line, then one value.
sub catalog_script
{
	my $s = "SET search_path = pg_catalog;\n";
	for my $cat (@categories, 'raw_acls')
	{
		my $rows = $cat eq 'raw_acls' ? $raw_acls : $category{$cat};
		$s .= "SELECT '\@\@\@ $cat';\n"
		  . "$cte SELECT coalesce(string_agg(q.line, E'\\n' ORDER BY q.sortkey COLLATE \"C\", q.line COLLATE \"C\"), '')"
		  . " FROM ($rows) AS q(sortkey, line);\n";
	}
	return $s;
}
sub catalog_of
{
	my ($db, $before, $after) = @_;
	my $out = sql($node, $db, ($before // '') . catalog_script() . ($after // ''));
	my %c;
	my @parts = split /^\@\@\@ (\w+)\n?/m, $out;
	shift @parts;    # whatever came before the first marker (nothing)
	while (my ($cat, $text) = splice(@parts, 0, 2))
	{
		$text //= '';
		$text =~ s/\n\z//;
		$c{$cat} = $text;
	}
	die "catalog query of $db returned " . join(',', sort keys %c)
	  unless keys %c == @categories + 1;
	return \%c;
}

# unified diff of two texts (diff -u from diffutils), at most 60 lines
my $diff_no = 0;
sub text_diff
{
	my ($want, $got, $want_name, $got_name) = @_;
	my $base = $node->basedir . '/diff_' . (++$diff_no);
	PostgreSQL::Test::Utils::append_to_file("$base.$want_name", "$want\n");
	PostgreSQL::Test::Utils::append_to_file("$base.$got_name", "$got\n");
	my ($out, $err) = ('', '');
	eval { IPC::Run::run([ 'diff', '-u', "$base.$want_name", "$base.$got_name" ], '>', \$out, '2>', \$err) }
	  or $out ||= "(no diff program: $@)\n--- $want_name\n$want\n+++ $got_name\n$got";
	my @lines = split /\n/, $out . $err;
	@lines = (@lines[0 .. 59], '... (' . (@lines - 60) . ' more lines)') if @lines > 60;
	return join("\n", @lines);
}

# same_catalog(WANT, GOT, WANT_NAME, GOT_NAME): one test per category
my %min_lines = (extension => 1, config_dump => 5, members => 30, schemas => 2,
	functions => 30, relations => 10, columns => 30, indexes => 5, constraints => 5,
	triggers => 5, types => 4, sequences => 1, comments => 30, dependencies => 50);
sub same_catalog
{
	my ($want, $got, $want_name, $got_name) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	for my $cat (@categories)
	{
		my $n = $want->{$cat} eq '' ? 0 : scalar(split /\n/, $want->{$cat});
		ok($want->{$cat} eq $got->{$cat}, "$cat: $got_name is identical to $want_name ($n lines)")
		  or diag(redact(text_diff($want->{$cat}, $got->{$cat}, $want_name, $got_name)));
		ok($n >= $min_lines{$cat}, "$cat: at least $min_lines{$cat} lines") if $min_lines{$cat};
	}
	if ($want->{raw_acls} ne $got->{raw_acls} && differing($want, $got) eq '')
	{
		note("raw ACLs (NULL vs an explicit ACL of the same meaning) differ between $want_name and $got_name:\n"
			  . text_diff($want->{raw_acls}, $got->{raw_acls}, $want_name, $got_name));
	}
	return;
}
sub differing
{
	my ($x, $y) = @_;
	return join(',', grep { $x->{$_} ne $y->{$_} } @categories);
}

# ---------------------------------------------------------------------------
# 1. 'upgraded': version 0.1, filled the way a user would
# ---------------------------------------------------------------------------
my $db = 'upgraded';
sql($node, 'postgres', "CREATE DATABASE $db");
sql($node, $db, "CREATE EXTENSION apikeys VERSION '$old_version' CASCADE");
is(sql($node, $db, "SELECT extversion FROM pg_extension WHERE extname = 'apikeys'"),
	$old_version, "$db: the extension is at version $old_version");
ok(defined wait_for_worker($node, $db, 15), "$db: gets its worker");

sql($node, $db, q{INSERT INTO apikeys.scopes (name, permissions, description)
	VALUES ('billing-admin', '{billing:*,lists:read}', 'Billing, and reading lists')});

mint($db, 'a_full', 'alice');
mint($db, 'a_ip', 'alice',
	q{ip_restrictions => '{10.0.0.0/8,192.168.1.0/24}', metadata => '{"env": "prod", "tier": 2}'});
mint($db, 'a_ro', 'alice', "scope => 'read-only'");
mint($db, 'a_custom', 'alice', q{scope => 'billing-admin', metadata => '{"team": "billing"}'});
mint($db, 'a_exp30', 'alice', "expires_in_days => 30, prefix => 'acme_live'");
mint($db, 'a_expired', 'alice', 'expires_in_days => 1');
mint($db, 'b_revoked', 'bob');
mint($db, 'b_rot_old', 'bob', q{scope => 'lists', metadata => '{"v": 1}'});
rotate($db, 'b_rot_old', 'b_rot_new', '1 day');
mint($db, 'b_rot0_old', 'bob', 'expires_in_days => 90');
rotate($db, 'b_rot0_old', 'b_rot0_new', '0');
mint($db, 'b_chain1', 'bob');
rotate($db, 'b_chain1', 'b_chain2', '2 days');
mint($db, 'c_v6', 'carol', q{ip_restrictions => '{2001:db8::/32}', scope => 'verify', prefix => 'crl'});
is(sql($node, $db, "SELECT apikeys.apikey_revoke('$k{b_revoked}{id}')"), 't', "$db: b_revoked revoked");
is(sql($node, $db, "SELECT apikeys.apikey_revoke('$k{b_chain2}{id}', 'bob')"), 't',
	"$db: b_chain2 revoked by its owner");
# a day passes for a_expired (its one-day lifetime is over)
sql($node, $db,
	"UPDATE apikeys.keys SET expires_at = now() - interval '1 minute' WHERE id = '$k{a_expired}{id}'");
# a well-formed key that exists nowhere (minted in a rolled-back transaction)
my $nowhere = ksql($db, q{
	BEGIN;
	SELECT key FROM apikeys.apikey_create(owner => 'nobody', name => 'rolled back');
	ROLLBACK;});
my @owners = qw(alice bob carol);
my %owner_of = map { $k{$_}{id} => $k{$_}{owner} } keys %k;

# the worker marks the keys past expires_at (a_expired, b_rot0_old), with
# their 'expired' audit events, before the state is recorded
my $took = wait_until($node, $db, q{
	SELECT count(*) FROM apikeys.keys
	 WHERE expires_at <= now() AND expired_at IS NULL AND revoked_at IS NULL}, '0', 15);
ok(defined $took, sprintf('%s: the worker marked the expired keys (%.2fs)', $db, $took // -1));

# The validation matrix: every key (and an unknown and a malformed one) x
# permission x address; one line "label|permission|address|code|key_id".
my @labels = sort keys %k;
my $matrix_sql = q{SELECT string_agg(format('%s|%s|%s|%s|%s', l, coalesce(p, '-'), coalesce(host(ip), '-'),}
  . q{ (v).code, coalesce((v).key_id, '-')), E'\n' ORDER BY l, p NULLS FIRST, ip NULLS FIRST)}
  . ' FROM (SELECT l, p, ip, apikeys.apikey_validate(key, p, ip) AS v FROM (VALUES '
  . join(', ', (map { "('$_', '$k{$_}{key}')" } @labels),
	"('zz_not_found', '$nowhere')", "('zz_malformed', 'ak_nope')")
  . q{) AS keys(l, key) CROSS JOIN (VALUES (NULL, NULL::inet), ('lists:read', NULL), ('lists:write', NULL),}
  . q{ ('billing:write', NULL), ('verify:check', NULL), (NULL, '10.1.2.3'), (NULL, '192.0.2.1'),}
  . q{ ('verify:check', '2001:db8::1')) AS cases(p, ip)) s};
my $n_cases = 8;


my $before_matrix = ksql($db, $matrix_sql);
is(scalar(split /\n/, $before_matrix), (@labels + 2) * $n_cases,
	"$db: the validation matrix has a line for every key x case (" . (@labels + 2) * $n_cases . ')');
my %spot = (
	'a_full|-|-' => 'valid', 'a_ip|-|-' => 'ip_not_allowed', 'a_ip|-|10.1.2.3' => 'valid',
	'a_ip|-|192.0.2.1' => 'ip_not_allowed', 'a_ro|lists:write|-' => 'insufficient_scope',
	'a_ro|lists:read|-' => 'valid', 'a_custom|billing:write|-' => 'valid',
	'a_custom|lists:write|-' => 'insufficient_scope', 'a_exp30|-|-' => 'valid',
	'a_expired|-|-' => 'expired', 'b_revoked|-|-' => 'revoked',
	'b_rot_old|lists:write|-' => 'valid', 'b_rot_new|lists:write|-' => 'valid',
	'b_rot0_old|-|-' => 'expired', 'b_rot0_new|-|-' => 'valid', 'b_chain1|-|-' => 'valid',
	'b_chain2|-|-' => 'revoked', 'c_v6|verify:check|2001:db8::1' => 'valid',
	'c_v6|-|10.1.2.3' => 'ip_not_allowed', 'zz_not_found|-|-' => 'not_found',
	'zz_malformed|-|-' => 'malformed');
my @bad_spots = grep { code_of($before_matrix, split(/\|/, $_)) ne $spot{$_} } sort keys %spot;
is(join(',', @bad_spots), '', "$db: the matrix answers as designed (" . scalar(keys %spot) . ' spot checks)');
my %codes = map { ((split /\|/)[3] => 1) } split /\n/, $before_matrix;
is(join(',', sort keys %codes),
	'expired,insufficient_scope,ip_not_allowed,malformed,not_found,revoked,valid',
	"$db: the matrix covers every outcome");

# more traffic, then everything flushed
is(kvalidate($node, $db, $k{a_full}{key}, 17), 'valid', "$db: 17 more calls of a_full");
is(kvalidate($node, $db, $k{a_ro}{key}, 5, 'lists:write'), 'insufficient_scope', "$db: 5 refused calls of a_ro");
is(kvalidate($node, $db, $k{a_ip}{key}, 4, undef, '192.168.1.7'), 'valid', "$db: 4 calls of a_ip from an allowed address");
flush_usage($node, $db);
ok(sql($node, $db, 'SELECT count(*) FROM apikeys.usage') > 0, "$db: apikeys.usage has rows");
ok(sql($node, $db, 'SELECT count(*) FROM apikeys.keys WHERE last_used_at IS NOT NULL') > 0,
	"$db: the flush set last_used_at");
my $audit_summary = sql($node, $db,
	q{SELECT string_agg(event || '=' || n, ' ' ORDER BY event) FROM (SELECT event, count(*) AS n FROM apikeys.audit GROUP BY event) s});
is($audit_summary, 'created=14 expired=2 revoked=2 rotated=3',
	"$db: the audit trail holds every event");

# The state, as text
my %state_sql = (
	'apikeys.keys' => q{SELECT string_agg(k::text, E'\n' ORDER BY id) FROM apikeys.keys k},
	'apikeys.scopes' => q{SELECT string_agg(s::text, E'\n' ORDER BY name) FROM apikeys.scopes s},
	'apikeys.audit' => q{SELECT string_agg(a::text, E'\n' ORDER BY event_id) FROM apikeys.audit a},
	'apikeys.usage' => q{SELECT string_agg(u::text, E'\n' ORDER BY key_id, day) FROM apikeys.usage u},
);
for my $o (@owners)
{
	$state_sql{"apikey_list('$o')"} = "SELECT string_agg(l::text, E'\\n') FROM apikeys.apikey_list('$o') l";
	$state_sql{"apikey_usage('$o', 90)"} = "SELECT string_agg(u::text, E'\\n') FROM apikeys.apikey_usage('$o', 90) u";
	$state_sql{"apikey_analytics('$o', 90)"} = "SELECT apikeys.apikey_analytics('$o', 90)";
}
# all of it in one psql session: a marker line before each value
sub state_of
{
	my ($d) = @_;
	my @names = sort keys %state_sql;
	my $out = sql($node, $d, join('', map { "SELECT '\@\@\@ $_';\n$state_sql{$names[$_]};\n" } 0 .. $#names));
	my @parts = split /^\@\@\@ (\d+)\n?/m, $out;
	shift @parts;
	my %st;
	while (my ($i, $text) = splice(@parts, 0, 2))
	{
		$text //= '';
		$text =~ s/\n\z//;
		$st{ $names[$i] } = $text;
	}
	die "state query of $d returned " . scalar(keys %st) . ' values' unless keys %st == @names;
	return \%st;
}
my $before_state = state_of($db);
my $before_usage = usage_of($node, $db);
my ($max_event) = sql($node, $db, 'SELECT max(event_id) FROM apikeys.audit');
my $alice_before = sql($node, $db, q{SELECT apikeys.apikey_analytics('alice', 90)->>'totalCalls'});
note(sprintf('%s before the update: %d keys, %d scopes, %d usage rows, %d audit events (%s)', $db,
	scalar(split /\n/, $before_state->{'apikeys.keys'}), scalar(split /\n/, $before_state->{'apikeys.scopes'}),
	scalar(split /\n/, $before_state->{'apikeys.usage'}), scalar(split /\n/, $before_state->{'apikeys.audit'}),
	$audit_summary));

# ---------------------------------------------------------------------------
# 2. The update
# ---------------------------------------------------------------------------
my $t0 = time;
sql($node, $db, 'ALTER EXTENSION apikeys UPDATE');
is(sql($node, $db, "SELECT extversion FROM pg_extension WHERE extname = 'apikeys'"), $new_version,
	sprintf('%s: ALTER EXTENSION apikeys UPDATE brought it to %s (%.2fs)', $db, $new_version, time - $t0));

# ---------------------------------------------------------------------------
# 3. 'fresh', and the comparison
# ---------------------------------------------------------------------------
sql($node, 'postgres', 'CREATE DATABASE fresh');
create_extension($node, 'fresh');
is(sql($node, 'fresh', "SELECT extversion FROM pg_extension WHERE extname = 'apikeys'"), $new_version,
	"fresh: CREATE EXTENSION installs $new_version");

my $fresh = catalog_of('fresh');
my $upgraded = catalog_of($db);
# kept for reading when the test fails (PG_TEST_NOCLEAN=1 keeps them always)
for my $c ([ fresh => $fresh ], [ upgraded => $upgraded ])
{
	PostgreSQL::Test::Utils::append_to_file($node->basedir . "/catalog_$c->[0].txt",
		join('', map { "\@\@\@ $_\n$c->[1]{$_}\n" } @categories, 'raw_acls'));
}
same_catalog($fresh, $upgraded, 'fresh', 'upgraded');

# a few things the comparison must be looking at
like($fresh->{functions}, qr/^apikeys\.apikey_create\(text,text,text,cidr\[\],integer,text,jsonb\): volatile=v .*security_definer=t .*config=\{"search_path=pg_catalog, pg_temp"\}/m,
	'the function listing shows apikey_create, SECURITY DEFINER with its search_path');
like($fresh->{functions}, qr/^apikeys\.apikey_revoke\(text,text\) body\| /m, '... and function bodies');
like($fresh->{relations}, qr/^apikeys\.keys: kind=r .*acl=\[[^\]]*\]/m, 'the relation listing shows apikeys.keys with its ACL');
like($fresh->{config_dump}, qr/^apikeys\.scopes: condition='WHERE/m, 'the config-dump listing shows the scopes condition');
like($fresh->{schemas}, qr/^apikeys_api: .*member=t/m, 'the schema listing shows apikeys_api as a member');
like($fresh->{triggers}, qr/^keys_invalidate_cache on apikeys\.keys: .* enabled=A/m, 'the trigger listing shows ENABLE ALWAYS');

# ---------------------------------------------------------------------------
# 4. Self-check: deliberate changes in 'fresh', rolled back, are reported
# ---------------------------------------------------------------------------
# (on functions picked from the catalog, so that later versions may rename them)
my $changed = catalog_of('fresh', q{
	BEGIN;
	DO $selfcheck$
	DECLARE
		f text[] := ARRAY(SELECT p.oid::regprocedure::text FROM pg_proc p
		                   WHERE p.pronamespace = 'apikeys'::regnamespace ORDER BY 1 LIMIT 3);
	BEGIN
		EXECUTE format('COMMENT ON FUNCTION %s IS %L', f[1], 'changed by the self-check');
		EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f[2]);
		EXECUTE format('ALTER EXTENSION apikeys DROP FUNCTION %s', f[3]);
	END
	$selfcheck$;
	CREATE INDEX selfcheck_usage_day_idx ON apikeys.usage (day);
}, "ROLLBACK;\n");
is(differing($fresh, $changed), 'comments,dependencies,functions,indexes,members,relations',
	'self-check: a comment, a grant, an index and a membership change are each reported');
is(differing($fresh, catalog_of('fresh')), '', 'self-check: after the rollback, fresh compares equal to itself');

# ---------------------------------------------------------------------------
# 5. The data survived and works
# ---------------------------------------------------------------------------
my $after_state = state_of($db);
for my $what (sort keys %state_sql)
{
	my $n = scalar(split /\n/, $before_state->{$what});
	ok($before_state->{$what} eq $after_state->{$what}, "$db: $what is identical after the update ($n lines)")
	  or diag(redact(text_diff($before_state->{$what}, $after_state->{$what}, 'before', 'after')));
}
ok(defined wait_for_worker($node, $db, 15), "$db: still has its worker after the update");

my $after_matrix = ksql($db, $matrix_sql);
my @w = split /\n/, $before_matrix;
my @g = split /\n/, $after_matrix;
my @diff = grep { ($w[$_] // '') ne ($g[$_] // '') } 0 .. ($#w > $#g ? $#w : $#g);
ok(!@diff, "$db: every key x permission x address gives the same code and key_id as before the update ("
	  . scalar(@w) . ' validations)')
  or diag(redact(join("\n", map { '  before ' . ($w[$_] // '(none)') . "\n  after  " . ($g[$_] // '(none)') }
		@diff[0 .. ($#diff > 9 ? 9 : $#diff)])));

flush_usage($node, $db, "$db: flush_usage() after the update returns true");
my $m = matrix_counts($after_matrix);
my %want_usage = map { $_ => [ @{ $before_usage->{$_} } ] } keys %$before_usage;
for my $id (keys %$m)
{
	$want_usage{$id} //= [ 0, 0 ];
	$want_usage{$id}[$_] += $m->{$id}[$_] for 0, 1;
}
is_deeply(usage_of($node, $db), \%want_usage,
	"$db: usage is the old rows plus exactly the validations made after the update");
is(sql($node, $db, 'SELECT count(*) FROM apikeys.usage'), scalar(split /\n/, $before_state->{'apikeys.usage'}),
	"$db: today's rows were added to, not duplicated");

# analytics: alice's total grew by her keys' valid calls in the matrix
my $alice_new_calls = 0;
$alice_new_calls += $m->{$_}[0] for grep { ($owner_of{$_} // '') eq 'alice' } keys %$m;
is(sql($node, $db, q{SELECT apikeys.apikey_analytics('alice', 90)->>'totalCalls'}),
	$alice_before + $alice_new_calls,
	"$db: apikey_analytics('alice') counts the old calls plus the new ($alice_before + $alice_new_calls)");
is(sql($node, $db, q{SELECT string_agg(id || ':' || status, ',' ORDER BY id) FROM apikeys.apikey_list('bob')}),
	sql($node, $db, q{SELECT string_agg(id || ':' || CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
		WHEN expires_at <= now() THEN 'expired' ELSE 'active' END, ',' ORDER BY id) FROM apikeys.keys WHERE owner = 'bob'}),
	"$db: apikey_list('bob') lists every key of bob with its status");
is(sql($node, $db, q{SELECT string_agg(status, ',' ORDER BY status) FROM apikeys.apikey_list('bob')}),
	'active,active,active,active,expired,revoked,revoked', "$db: bob's keys: 4 active, 1 expired, 2 revoked");

# a new key: created, validated, revoked
mint($db, 'n_new', 'alice', q{scope => 'lists', prefix => 'after_update'});
is(kvalidate($node, $db, $k{n_new}{key}, 3, 'lists:write'), 'valid', "$db: a key created after the update validates");
is(sql($node, $db, "SELECT apikeys.apikey_revoke('$k{n_new}{id}', 'alice')"), 't', "$db: ... and can be revoked");
is(kvalidate($node, $db, $k{n_new}{key}, 1), 'revoked', "$db: ... and then validates as revoked");
is(sql($node, $db, "SELECT string_agg(event, ',' ORDER BY event_id) || ' ' || bool_and(event_id > $max_event)
	FROM apikeys.audit WHERE key_id = '$k{n_new}{id}'"),
	'created,revoked true', "$db: its audit events follow the old ones (ids above $max_event)");
flush_usage($node, $db, "$db: flush_usage() after the new key");
is(join('/', @{ usage_of($node, $db)->{ $k{n_new}{id} } // [] }), '3/1', "$db: the new key's usage is 3 calls, 1 rejected");

# ---------------------------------------------------------------------------
# 6. 'cycle': the update path, then DROP EXTENSION / CREATE EXTENSION
# ---------------------------------------------------------------------------
my $cy = 'cycle';
sql($node, 'postgres', "CREATE DATABASE $cy");
sql($node, $cy, "CREATE EXTENSION apikeys VERSION '$old_version' CASCADE");
sql($node, $cy, "ALTER EXTENSION apikeys UPDATE TO '$new_version'");
is(sql($node, $cy, "SELECT extversion FROM pg_extension WHERE extname = 'apikeys'"), $new_version,
	"$cy: UPDATE TO '$new_version' from $old_version");
mint($cy, 'cy1', 'erin');
is(kvalidate($node, $cy, $k{cy1}{key}, 2), 'valid', "$cy: a key created after the update validates");
is(differing($fresh, catalog_of($cy)), '', "$cy: after the update, every category compares equal to fresh");

sql($node, $cy, 'DROP EXTENSION apikeys');
is(sql($node, $cy, "SELECT count(*) FROM pg_extension WHERE extname = 'apikeys'"), '0', "$cy: DROP EXTENSION works");
ok(defined wait_for_no_worker($node, "datname = '$cy'", 15), "$cy: its worker leaves");
create_extension($node, $cy);
is(sql($node, $cy, "SELECT extversion FROM pg_extension WHERE extname = 'apikeys'"), $new_version,
	"$cy: CREATE EXTENSION again installs $new_version");
my $recreated = catalog_of($cy);
is(differing($fresh, $recreated), '', "$cy: after DROP and CREATE, every category compares equal to fresh")
  or diag(join("\n", map { text_diff($fresh->{$_}, $recreated->{$_}, 'fresh', $cy) }
		grep { $fresh->{$_} ne $recreated->{$_} } @categories));
is(kvalidate($node, $cy, $k{cy1}{key}, 1), 'not_found', "$cy: the dropped key is gone");
mint($cy, 'cy2', 'erin');
is(kvalidate($node, $cy, $k{cy2}{key}, 2), 'valid', "$cy: a new key validates");
ok(defined wait_for_worker($node, $cy, 15), "$cy: gets a worker again");
flush_usage($node, $cy);
is(join('/', @{ usage_of($node, $cy)->{ $k{cy2}{id} } // [] }), '2/0', "$cy: its usage is counted");

# ---------------------------------------------------------------------------
# 6b. Every other installable version older than the newest updates to the
# same objects (nothing to do while 0.1 is the only older version)
# ---------------------------------------------------------------------------
my @older = grep { $_ ne $old_version && $_ ne $new_version } split /\n/, sql($node, 'postgres',
	"SELECT version FROM pg_available_extension_versions WHERE name = 'apikeys' ORDER BY version");
for my $v (@older)
{
	(my $vdb = "from_$v") =~ s/\W/_/g;
	sql($node, 'postgres', "CREATE DATABASE $vdb");
	sql($node, $vdb, "CREATE EXTENSION apikeys VERSION '$v' CASCADE");
	sql($node, $vdb, 'ALTER EXTENSION apikeys UPDATE');
	my $vc = catalog_of($vdb);
	is(differing($fresh, $vc), '', "$vdb: $v updated to $new_version compares equal to fresh")
	  or diag(join("\n", map { "$_:\n" . text_diff($fresh->{$_}, $vc->{$_}, 'fresh', $vdb) }
			grep { $fresh->{$_} ne $vc->{$_} } @categories));
}
note('older versions updated besides ' . $old_version . ': ' . (@older ? "@older" : 'none'));

# ---------------------------------------------------------------------------
# 7. The update run by another superuser than the one that created the
# extension (as when the DBA who upgrades is not the one who installed):
# objects the update script creates belong to the role running it.
# ---------------------------------------------------------------------------
my $su = 'other_su';
sql($node, 'postgres', "CREATE ROLE apikeys_test_upgrader SUPERUSER LOGIN; CREATE DATABASE $su");
sql($node, $su, "CREATE EXTENSION apikeys VERSION '$old_version' CASCADE");
$node->safe_psql($su, 'ALTER EXTENSION apikeys UPDATE', extra_params => [ '-U', 'apikeys_test_upgrader' ]);
is(sql($node, $su, "SELECT extversion || ' ' || extowner::regrole FROM pg_extension WHERE extname = 'apikeys'"),
	"$new_version " . sql($node, 'fresh', "SELECT extowner::regrole FROM pg_extension WHERE extname = 'apikeys'"),
	"$su: updated to $new_version by another superuser; the extension keeps its owner");
my $other = catalog_of($su);
TODO:
{
	local $TODO = 'objects created by ALTER EXTENSION UPDATE belong to the role running it, not to the extension owner';
	is(differing($fresh, $other), '', "$su: updated by another superuser, every category compares equal to fresh")
	  or diag(join("\n", map { "$_:\n" . text_diff($fresh->{$_}, $other->{$_}, 'fresh', $su) }
			grep { $fresh->{$_} ne $other->{$_} } @categories));
}

check_no_crash($node);
note(sprintf('011_upgrade took %.1fs', time - $t_start));
$node->stop;
done_testing();
