# The two commands of the README. Both install what they need (venv, packages, jars).
.PHONY: demo test lint bench

# Test sessions run side by side, each with its own broker, PostgreSQL, S3 and registry
# on its own ports (tests/conftest.py); a test file stays on one session. Then the
# timing-sensitive fault runs (marker `serial`) run alone, in one session.
TEST_WORKERS ?= 2

demo:
	@deploy/local/bootstrap.sh
	@.venv/bin/ledgerflow demo

test:
	@deploy/local/bootstrap.sh --lake
	@.venv/bin/ruff check app tests
	@.venv/bin/ruff format --check app tests
	@.venv/bin/mypy app
	@status=0; \
	.venv/bin/python -m pytest -p no:cacheprovider --durations=25 -n $(TEST_WORKERS) --dist loadfile -m "not slow and not serial" || status=$$?; \
	.venv/bin/python -m pytest -p no:cacheprovider --durations=10 -m "serial and not slow" || status=$$?; \
	[ $$status -eq 0 ] || echo "make test: a pytest phase failed (parallel sessions first, then the serial fault runs)"; \
	exit $$status

lint:
	@.venv/bin/ruff check app tests && .venv/bin/ruff format --check app tests && .venv/bin/mypy app

# Benchmarks against the peers and anchors in one run on the local broker (Quix Streams,
# faust-streaming live in their own venv so their pins never touch the test environment;
# Kafka Streams is resolved from Maven Central into ~/.cache/ledgerflow by the harness);
# prints the whole table with its command and writes it to docs/benchmarks.md.
BENCH_PEERS = quixstreams faust-streaming aiokafka[lz4] orjson psycopg2-binary

bench:
	@deploy/local/bootstrap.sh
	@[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
	@[ "$$(cat .venv-bench/.ledgerflow-peers 2>/dev/null)" = "$(BENCH_PEERS)" ] || (.venv-bench/bin/pip install -q $(BENCH_PEERS) && echo "$(BENCH_PEERS)" > .venv-bench/.ledgerflow-peers)
	@.venv/bin/python -m tests.bench --write-doc
