# The two commands of the README. Both install what they need (venv, packages, jars).
.PHONY: demo test lint bench

demo:
	@deploy/local/bootstrap.sh
	@.venv/bin/ledgerflow demo

test:
	@deploy/local/bootstrap.sh
	@.venv/bin/ruff check app tests
	@.venv/bin/ruff format --check app tests
	@.venv/bin/mypy app
	@.venv/bin/python -m pytest -p no:cacheprovider

lint:
	@.venv/bin/ruff check app tests && .venv/bin/ruff format --check app tests && .venv/bin/mypy app

# Benchmarks against the peers (Quix Streams, faust-streaming live in their own venv
# so their pins never touch the test environment); writes docs/benchmarks.md.
BENCH_PEERS = quixstreams faust-streaming aiokafka[lz4] orjson psycopg2-binary

bench:
	@deploy/local/bootstrap.sh
	@[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
	@[ "$$(cat .venv-bench/.ledgerflow-peers 2>/dev/null)" = "$(BENCH_PEERS)" ] || (.venv-bench/bin/pip install -q $(BENCH_PEERS) && echo "$(BENCH_PEERS)" > .venv-bench/.ledgerflow-peers)
	@.venv/bin/python -m tests.bench --write-doc
