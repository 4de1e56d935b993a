# apikeys: PGXS build.
#   make && make install    build and install into the PostgreSQL of PG_CONFIG
#   make test               install what is missing, build, run every suite
#   make demo               the same set-up, then a walk-through on a local cluster
#   make fuzz               run the key-parser fuzzer for longer than make test does
#   make bench              the benchmark suite (not part of make test)
#   make soak               a bounded mixed-load soak test (not part of make test)
#   make installcheck       pg_regress on a temporary instance that preloads apikeys
#                           (no running server needed; as an unprivileged user)

EXTENSION = apikeys
MODULE_big = apikeys
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
DATA = $(wildcard apikeys--*.sql)
PG_CPPFLAGS = -I$(srcdir)/src -I$(libpq_srcdir)
# a hot standby's worker ships usage to the primary over libpq (src/ship.c)
SHLIB_LINK_INTERNAL = $(libpq)
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter

# every sql/*.sql: test_helpers (which the others use) first, then scopes
# (its custom scope shows in later tests' lists of scopes), then the rest
REGRESS_FIRST = test_helpers scopes
REGRESS = $(REGRESS_FIRST) $(filter-out $(REGRESS_FIRST),$(sort $(basename $(notdir $(wildcard $(srcdir)/sql/*.sql)))))
REGRESS_OPTS = --load-extension=pgcrypto --load-extension=apikeys \
	--temp-instance=./tmp_check --temp-config=$(srcdir)/test/regress.conf

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

ifneq ($(wildcard $(PGXS)),)
include $(PGXS)
# PGXS tracks no header dependencies: a changed header rebuilds every object
# (a struct laid out two ways in one library corrupts shared memory)
$(OBJS): $(wildcard $(srcdir)/src/*.h)
else
# No server development files yet: only the targets that install them work.
all install installcheck:
	@echo "PostgreSQL 15 server development files not found: run 'make test' or 'make demo', which install them" >&2
	@exit 1
endif

.PHONY: test demo demo-stop fuzz bench soak print-regress

test:
	bash test/run.sh

demo:
	bash examples/demo.sh

demo-stop:
	bash examples/demo.sh stop

fuzz:
	bash test/fuzz/run.sh long

bench:
	bash test/bench/run.sh

soak:
	bash test/soak/run.sh

print-regress:
	@echo $(REGRESS)
